using System.Security.Cryptography.X509Certificates;
using ConnectionRefresh.Testing;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>
/// A fake API server that serves HTTPS, as a real one does, with a server certificate from a throw-away cluster CA: a client
/// that trusts <see cref="CaPem"/> (the service account's <c>ca.crt</c>, a kubeconfig's certificate-authority-data) can
/// verify it. It owns the CA and the server certificate, which must outlive the server (the TLS handshakes use its key).
/// </summary>
internal sealed class HttpsKubernetesApi : IAsyncDisposable
{
    private readonly TestCertificates _ca;
    private readonly X509Certificate2 _serverCertificate;

    private HttpsKubernetesApi(TestCertificates ca, X509Certificate2 serverCertificate, SimulatedKubernetesApi api)
    {
        _ca = ca;
        _serverCertificate = serverCertificate;
        Api = api;
    }

    public SimulatedKubernetesApi Api { get; }

    /// <summary>The cluster CA's certificate as PEM: what a client is given to trust.</summary>
    public string CaPem => _ca.CaPem;

    /// <summary>
    /// Starts the server accepting <paramref name="acceptedToken"/>. Its certificate is issued by the cluster CA, or by
    /// <paramref name="impostorCa"/> (owned by the caller) to play a server the client must not trust.
    /// </summary>
    public static async Task<HttpsKubernetesApi> StartAsync(string acceptedToken, TestCertificates? impostorCa = null)
    {
        var ca = new TestCertificates();
        var serverCertificate = (impostorCa ?? ca).IssueServerCertificate();
        try
        {
            return new HttpsKubernetesApi(ca, serverCertificate, await SimulatedKubernetesApi.StartHttpsAsync(serverCertificate, acceptedToken));
        }
        catch
        {
            serverCertificate.Dispose();
            ca.Dispose();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await Api.DisposeAsync();
        _serverCertificate.Dispose();
        _ca.Dispose();
    }
}
