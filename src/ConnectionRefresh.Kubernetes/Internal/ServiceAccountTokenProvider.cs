using System.Net.Http.Headers;
using k8s.Authentication;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// Reads a bearer token file (the service account's <c>token</c>, a kubeconfig user's <c>tokenFile</c>) on every request to
/// the API server, so a token that the kubelet rotated (projected tokens live about an hour and are renewed before expiry)
/// is used at once, and a file that appears later (not mounted yet) is picked up. Requests are rare (a LIST and a WATCH
/// every few minutes), so the read costs nothing. When the file does not exist, a <paramref name="required"/> token fails
/// the request (<see cref="FileNotFoundException"/>, retried by the resolver, whose message starts with
/// <paramref name="description"/>: what the file is, default "The service account token '<c>path</c>'"); an optional one sends none.
/// Thread-safe: stateless apart from the immutable settings.
/// </summary>
internal sealed class ServiceAccountTokenProvider(string tokenPath, bool required, string? description = null) : ITokenProvider
{
    public async Task<AuthenticationHeaderValue> GetAuthenticationHeaderAsync(CancellationToken cancellationToken)
    {
        string token;
        try
        {
            token = await File.ReadAllTextAsync(tokenPath, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
        {
            if (!required)
            {
                return null!; // No Authorization header.
            }

            // "Not mounted yet" fits a pod's service account only; a kubeconfig's tokenFile is the developer's file.
            var message = description is null
                ? $"The service account token '{tokenPath}' does not exist (not mounted yet?)."
                : $"{description} does not exist.";
            throw new FileNotFoundException(message, tokenPath, ex);
        }

        return new AuthenticationHeaderValue("Bearer", token.Trim());
    }
}
