using System.Security.Cryptography.X509Certificates;
using k8s;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// Builds the <see cref="KubernetesClientConfiguration"/>: an explicit kubeconfig; else the API server
/// from the options or from <c>KUBERNETES_SERVICE_HOST/PORT</c> with the service account's token
/// (re-read on every request) and CA; else the default kubeconfig (local development). Stateless.
/// </summary>
internal static class KubernetesClientConfigurationFactory
{
    public static KubernetesClientConfiguration Create(KubernetesResolverOptions options)
    {
        if (!string.IsNullOrEmpty(options.KubeconfigPath))
        {
            return KubernetesClientConfiguration.BuildConfigFromConfigFile(options.KubeconfigPath);
        }

        var apiServer = options.ApiServer ?? InClusterApiServer();
        if (apiServer is null)
        {
            return KubernetesClientConfiguration.BuildDefaultConfig();
        }

        var configuration = new KubernetesClientConfiguration { Host = apiServer.ToString() };
        var tokenPath = Path.Combine(options.ServiceAccountPath, "token");
        if (File.Exists(tokenPath))
        {
            configuration.TokenProvider = new ServiceAccountTokenProvider(tokenPath);
        }

        var caPath = Path.Combine(options.ServiceAccountPath, "ca.crt");
        if (apiServer.Scheme == Uri.UriSchemeHttps && File.Exists(caPath))
        {
            var caCerts = new X509Certificate2Collection();
            caCerts.ImportFromPemFile(caPath);
            configuration.SslCaCerts = caCerts;
        }

        return configuration;
    }

    /// <summary>The namespace of <c>kubernetes:///service:port</c> targets.</summary>
    public static string DefaultNamespace(KubernetesResolverOptions options)
    {
        var path = Path.Combine(options.ServiceAccountPath, "namespace");
        if (File.Exists(path))
        {
            var ns = File.ReadAllText(path).Trim();
            if (ns.Length > 0)
            {
                return ns;
            }
        }

        return "default";
    }

    private static Uri? InClusterApiServer()
    {
        var host = Environment.GetEnvironmentVariable("KUBERNETES_SERVICE_HOST");
        var port = Environment.GetEnvironmentVariable("KUBERNETES_SERVICE_PORT");
        if (string.IsNullOrEmpty(host) || string.IsNullOrEmpty(port) || !int.TryParse(port, System.Globalization.CultureInfo.InvariantCulture, out var portNumber))
        {
            return null;
        }

        return new UriBuilder(Uri.UriSchemeHttps, host, portNumber).Uri;
    }
}
