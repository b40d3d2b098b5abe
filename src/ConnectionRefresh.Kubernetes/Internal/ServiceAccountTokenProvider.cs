using System.Net.Http.Headers;
using k8s.Authentication;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// Reads the service account token file on every request to the API server, so a token that the
/// kubelet rotated (projected tokens live about an hour and are renewed before expiry) is used at
/// once. Requests are rare (a LIST and a WATCH every few minutes), so the read costs nothing.
/// Thread-safe: stateless apart from the immutable path.
/// </summary>
internal sealed class ServiceAccountTokenProvider(string tokenPath) : ITokenProvider
{
    public async Task<AuthenticationHeaderValue> GetAuthenticationHeaderAsync(CancellationToken cancellationToken)
    {
        var token = await File.ReadAllTextAsync(tokenPath, cancellationToken).ConfigureAwait(false);
        return new AuthenticationHeaderValue("Bearer", token.Trim());
    }
}
