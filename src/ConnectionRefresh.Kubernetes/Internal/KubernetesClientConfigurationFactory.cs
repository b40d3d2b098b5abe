using System.Globalization;
using System.Security.Cryptography.X509Certificates;
using k8s;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// Builds the <see cref="KubernetesClientConfiguration"/>, in this order:
/// <list type="number">
/// <item><see cref="KubernetesResolverOptions.KubeconfigPath"/>: that kubeconfig (its current context).</item>
/// <item><see cref="KubernetesResolverOptions.ApiServer"/>, else in a pod <c>https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT</c>:
/// the token from <see cref="KubernetesResolverOptions.ServiceAccountPath"/> (re-read on every request) and, for https,
/// its <c>ca.crt</c> as the only trusted root. This is done here rather than with
/// <see cref="KubernetesClientConfiguration.InClusterConfig"/>, which reads the fixed <c>/var/run/secrets/...</c>
/// paths and so would ignore <see cref="KubernetesResolverOptions.ServiceAccountPath"/>.</item>
/// <item>otherwise the default kubeconfig: the first existing file of <c>KUBECONFIG</c>, else <c>~/.kube/config</c>; neither is an
/// error (the client library would silently fall back to <c>http://localhost:8080</c>).</item>
/// </list>
/// Stateless.
/// </summary>
internal static class KubernetesClientConfigurationFactory
{
    public const string ServiceHostVariable = "KUBERNETES_SERVICE_HOST";
    public const string ServicePortVariable = "KUBERNETES_SERVICE_PORT";

    public static KubernetesClientConfiguration Create(KubernetesResolverOptions options) => Create(options, EnvironmentReader.Process);

    public static KubernetesClientConfiguration Create(KubernetesResolverOptions options, EnvironmentReader environment)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(environment);
        if (!string.IsNullOrEmpty(options.KubeconfigPath))
        {
            return KubernetesClientConfiguration.BuildConfigFromConfigFile(options.KubeconfigPath);
        }

        var apiServer = options.ApiServer ?? InClusterApiServer(environment);
        if (apiServer is null)
        {
            return DefaultKubeconfig(environment);
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

    /// <summary>
    /// The namespace of <c>kubernetes:///service:port</c> targets: the kubeconfig context's namespace when
    /// <paramref name="configuration"/> came from a kubeconfig that names one, else the service account's
    /// <c>namespace</c> file, else <c>default</c>.
    /// </summary>
    public static string DefaultNamespace(KubernetesResolverOptions options, KubernetesClientConfiguration? configuration = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!string.IsNullOrWhiteSpace(configuration?.Namespace))
        {
            return configuration.Namespace.Trim();
        }

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

    /// <summary><c>https://host:port</c> from <c>KUBERNETES_SERVICE_HOST/PORT</c> (IPv6 hosts bracketed), or null outside a pod.</summary>
    public static Uri? InClusterApiServer(EnvironmentReader environment)
    {
        ArgumentNullException.ThrowIfNull(environment);
        var host = environment[ServiceHostVariable];
        var port = environment[ServicePortVariable];
        if (string.IsNullOrEmpty(host) || string.IsNullOrEmpty(port) ||
            !int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out var portNumber) || portNumber is < 1 or > 65535)
        {
            return null;
        }

        // UriBuilder brackets an IPv6 host (KUBERNETES_SERVICE_HOST=fd00::1 in IPv6 clusters).
        return new UriBuilder(Uri.UriSchemeHttps, host, portNumber).Uri;
    }

    private static KubernetesClientConfiguration DefaultKubeconfig(EnvironmentReader environment)
    {
        var list = environment["KUBECONFIG"];
        if (!string.IsNullOrWhiteSpace(list))
        {
            // The client library's merge of several files is not public: the first existing file is used.
            var first = list.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .FirstOrDefault(File.Exists);
            if (first is not null)
            {
                return KubernetesClientConfiguration.BuildConfigFromConfigFile(first);
            }
        }

        var home = environment["HOME"];
        if (string.IsNullOrEmpty(home))
        {
            home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        }

        var defaultPath = Path.Combine(home, ".kube", "config");
        if (File.Exists(defaultPath))
        {
            return KubernetesClientConfiguration.BuildConfigFromConfigFile(defaultPath);
        }

        throw new InvalidOperationException(
            $"No Kubernetes API server configured: {ServiceHostVariable}/{ServicePortVariable} are not set (not in a pod), " +
            $"KUBECONFIG names no existing file and '{defaultPath}' does not exist.");
    }
}
