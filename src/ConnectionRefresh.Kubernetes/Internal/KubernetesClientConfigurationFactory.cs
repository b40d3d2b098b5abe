using System.Globalization;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using k8s;
using k8s.KubeConfigModels;
using YamlDotNet.RepresentationModel;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// Builds the <see cref="KubernetesClientConfiguration"/> in two steps, so that mistakes fail clearly and early while
/// conditions that fix themselves are retried:
/// <list type="number">
/// <item><see cref="Resolve"/> decides where the API server comes from, first match wins:
/// <see cref="KubernetesResolverOptions.KubeconfigPath"/> (that kubeconfig's current context);
/// <see cref="KubernetesResolverOptions.ApiServer"/>; in a pod <c>https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT</c>;
/// otherwise the default kubeconfig (the first existing file of <c>KUBECONFIG</c>, else <c>~/.kube/config</c>). A kubeconfig is
/// read and checked here (current context, its cluster with a server, its user), without running credential plugins.
/// Errors are configuration mistakes (<see cref="InvalidOperationException"/> naming the setting or file and what is wrong);
/// neither an API server nor a kubeconfig is one too (the client library would silently use <c>http://localhost:8080</c>).</item>
/// <item><see cref="Build"/> creates the configuration: for a kubeconfig, the client library's (it runs an <c>exec</c>
/// credential plugin; a user's <c>tokenFile</c>, which the library ignores, is re-read on every request); otherwise the token
/// from <see cref="KubernetesResolverOptions.ServiceAccountPath"/> (re-read on every request) and, for https, its
/// <c>ca.crt</c> as the only trusted root. In a pod the token and <c>ca.crt</c> are required: while one is missing (not
/// mounted yet) requests, or this step, fail and the resolver retries with its backoff. A missing directory is a
/// <see cref="ServiceAccountMissingException"/> (no token mounted at all: <c>automountServiceAccountToken: false</c>),
/// retried too but reported once as a configuration error. This is done here rather than with
/// <see cref="KubernetesClientConfiguration.InClusterConfig"/>, which reads the fixed <c>/var/run/secrets/...</c> paths
/// and so would ignore <see cref="KubernetesResolverOptions.ServiceAccountPath"/>.</item>
/// </list>
/// Stateless.
/// </summary>
internal static class KubernetesClientConfigurationFactory
{
    public const string ServiceHostVariable = "KUBERNETES_SERVICE_HOST";
    public const string ServicePortVariable = "KUBERNETES_SERVICE_PORT";

    /// <summary>Both steps at once (tests).</summary>
    public static KubernetesClientConfiguration Create(KubernetesResolverOptions options, EnvironmentReader environment) =>
        Build(Resolve(options, environment), options);

    /// <summary>Step 1: where the API server comes from. Throws <see cref="InvalidOperationException"/> for a configuration mistake.</summary>
    public static KubernetesApiSource Resolve(KubernetesResolverOptions options, EnvironmentReader environment)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(environment);
        if (!string.IsNullOrEmpty(options.KubeconfigPath))
        {
            // Named where the value came from: its configuration key (of whichever section was bound) or the property.
            var setting = options.Origins.Name(nameof(KubernetesResolverOptions.KubeconfigPath), options.KubeconfigPath);
            return Kubeconfig(options.KubeconfigPath, $"{setting} = '{options.KubeconfigPath}'", options);
        }

        if (options.ApiServer is { } apiServer)
        {
            return new KubernetesApiSource(KubernetesApiSourceKind.ApiServer, apiServer, null, DefaultNamespace(options));
        }

        if (InClusterApiServer(environment) is { } inCluster)
        {
            return new KubernetesApiSource(KubernetesApiSourceKind.InCluster, inCluster, null, DefaultNamespace(options));
        }

        var list = environment["KUBECONFIG"];
        if (!string.IsNullOrWhiteSpace(list))
        {
            // The client library's merge of several files is not public: the first existing file is used.
            var first = list.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .FirstOrDefault(File.Exists);
            if (first is not null)
            {
                return Kubeconfig(first, $"KUBECONFIG file '{first}'", options);
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
            return Kubeconfig(defaultPath, $"kubeconfig '{defaultPath}'", options);
        }

        var notInAPod = string.IsNullOrEmpty(environment[ServicePortVariable])
            ? $"{ServiceHostVariable}/{ServicePortVariable} are not set (not in a pod)"
            : $"{ServiceHostVariable} is not set (not in a pod)";
        throw new InvalidOperationException(
            $"No Kubernetes API server configured: {notInAPod}, KUBECONFIG names no existing file and '{defaultPath}' does not exist.");
    }

    /// <summary>
    /// Reads and checks a kubeconfig without running credential plugins; returns its current context's namespace, or null.
    /// Throws <see cref="InvalidOperationException"/> starting with <paramref name="what"/> when it is missing or unusable.
    /// </summary>
    public static string? CheckKubeconfig(string path, string what)
    {
        if (!File.Exists(path))
        {
            // A relative path is resolved against the current directory, which in a container or service is often not the
            // application's: show where the file was looked for.
            var where = Path.IsPathFullyQualified(path) ? "" : $" (a relative path is resolved against the current directory: '{Path.GetFullPath(path)}')";
            throw new InvalidOperationException($"{what}: the file does not exist{where}.");
        }

        K8SConfiguration config;
        try
        {
            config = KubernetesClientConfiguration.LoadKubeConfig(path);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            throw new InvalidOperationException($"{what}: not a valid kubeconfig ({ex.Message}).", ex);
        }

        if (string.IsNullOrWhiteSpace(config.CurrentContext))
        {
            throw new InvalidOperationException($"{what}: the kubeconfig has no current-context.");
        }

        var context = config.Contexts?.FirstOrDefault(c => string.Equals(c.Name, config.CurrentContext, StringComparison.OrdinalIgnoreCase))?.ContextDetails
            ?? throw new InvalidOperationException($"{what}: the current-context '{config.CurrentContext}' is not among its contexts.");
        var cluster = config.Clusters?.FirstOrDefault(c => string.Equals(c.Name, context.Cluster, StringComparison.OrdinalIgnoreCase))?.ClusterEndpoint;
        if (string.IsNullOrWhiteSpace(cluster?.Server) || !Uri.TryCreate(cluster.Server, UriKind.Absolute, out _))
        {
            throw new InvalidOperationException($"{what}: the cluster '{context.Cluster}' of context '{config.CurrentContext}' is missing or has no valid server URL.");
        }

        if (!string.IsNullOrWhiteSpace(context.User) &&
            config.Users?.Any(u => string.Equals(u.Name, context.User, StringComparison.OrdinalIgnoreCase)) != true)
        {
            throw new InvalidOperationException($"{what}: the user '{context.User}' of context '{config.CurrentContext}' is not among its users.");
        }

        return string.IsNullOrWhiteSpace(context.Namespace) ? null : context.Namespace.Trim();
    }

    /// <summary>
    /// Step 2: the client configuration. May fail for a while (a credential plugin that fails, a service account file not
    /// mounted yet); the caller retries.
    /// </summary>
    public static KubernetesClientConfiguration Build(KubernetesApiSource source, KubernetesResolverOptions options)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(options);
        if (source.Kind == KubernetesApiSourceKind.Kubeconfig)
        {
            return BuildFromKubeconfig(source.KubeconfigPath!);
        }

        var inCluster = source.Kind == KubernetesApiSourceKind.InCluster;
        if (inCluster && !Directory.Exists(options.ServiceAccountPath))
        {
            // Not "not mounted yet": the kubelet mounts a pod's volumes before its containers start, so a missing directory
            // means no token is mounted at all.
            throw ServiceAccountMissing(options);
        }

        var configuration = new KubernetesClientConfiguration
        {
            Host = source.Server!.ToString(),
            TokenProvider = new ServiceAccountTokenProvider(Path.Combine(options.ServiceAccountPath, "token"), required: inCluster),
        };

        var caPath = Path.Combine(options.ServiceAccountPath, "ca.crt");
        if (source.Server.Scheme == Uri.UriSchemeHttps)
        {
            if (File.Exists(caPath))
            {
                var caCerts = new X509Certificate2Collection();
                try
                {
                    caCerts.ImportFromPemFile(caPath);
                }
                catch (CryptographicException ex)
                {
                    throw new InvalidDataException($"The service account's CA certificate '{caPath}' is not a PEM certificate: {ex.Message}", ex);
                }

                if (caCerts.Count == 0)
                {
                    // An empty set of roots would reject every server certificate, with a less helpful TLS error.
                    throw new InvalidDataException($"The service account's CA certificate '{caPath}' holds no PEM certificate.");
                }

                configuration.SslCaCerts = caCerts;
            }
            else if (inCluster)
            {
                // Without it the system's roots would be trusted for good: wait for the file instead.
                throw new FileNotFoundException(
                    $"The service account's CA certificate '{caPath}' does not exist (not mounted yet?); it is needed to verify the API server.", caPath);
            }
        }

        return configuration;
    }

    /// <summary>
    /// The error for a pod whose <see cref="KubernetesResolverOptions.ServiceAccountPath"/> is not a directory. The setting is
    /// named where its value came from (a configuration key, or the property when set in code); the default, set nowhere,
    /// is called the default, and the key to set is that of the section the options are bound from, if any.
    /// </summary>
    public static ServiceAccountMissingException ServiceAccountMissing(KubernetesResolverOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        const string Setting = nameof(KubernetesResolverOptions.ServiceAccountPath);
        var path = options.ServiceAccountPath;
        var origin = options.Origins.Name(Setting, path);
        string named, toSet;
        if (origin == $"{nameof(KubernetesResolverOptions)}.{Setting}" && path == KubernetesResolverDefaults.ServiceAccountPath)
        {
            named = $"{Setting} = '{path}' (the default)";
            toSet = options.ConfigurationSectionPath is { Length: > 0 } section ? $"{section}:{Setting}" : origin;
        }
        else
        {
            named = $"{origin} = '{path}'";
            toSet = origin;
        }

        var what = File.Exists(path) ? "is a file, not a directory" : "does not exist";
        return new ServiceAccountMissingException(
            $"In a pod ({ServiceHostVariable} is set) the resolver authenticates with the pod's service account, but {named} " +
            $"{what}, so it has no token and CA certificate. The pod or its ServiceAccount probably sets " +
            "automountServiceAccountToken: false: set it to true, or mount a projected volume with a serviceAccountToken ('token'), " +
            $"the kube-root-ca.crt ConfigMap ('ca.crt') and the namespace ('namespace') there, or set {toSet} to where they are mounted.");
    }

    /// <summary>
    /// The namespace of <c>kubernetes:///service:port</c> targets: <paramref name="contextNamespace"/> (a kubeconfig's current
    /// context) when set, else the service account's <c>namespace</c> file, else <c>default</c>.
    /// </summary>
    public static string DefaultNamespace(KubernetesResolverOptions options, string? contextNamespace = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!string.IsNullOrWhiteSpace(contextNamespace))
        {
            return contextNamespace.Trim();
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

    /// <summary>
    /// <c>https://host:port</c> from <c>KUBERNETES_SERVICE_HOST/PORT</c> (IPv6 hosts bracketed), or null outside a pod
    /// (<c>KUBERNETES_SERVICE_HOST</c> not set). With the host set, a port that is missing or not a number from 1 to 65535,
    /// or a host that is not one, is a configuration mistake (the kubelet sets both; the pod's spec overrode one): throws
    /// <see cref="InvalidOperationException"/> naming the variable, its value and what is allowed, rather than falling back
    /// to a kubeconfig or reporting the variables as not set.
    /// </summary>
    public static Uri? InClusterApiServer(EnvironmentReader environment)
    {
        ArgumentNullException.ThrowIfNull(environment);
        var host = environment[ServiceHostVariable];
        if (string.IsNullOrEmpty(host))
        {
            return null;
        }

        var port = environment[ServicePortVariable];
        var inAPod = $"{ServiceHostVariable} = '{host}' is set (in a pod), but";
        if (string.IsNullOrEmpty(port))
        {
            throw new InvalidOperationException(
                $"{inAPod} {ServicePortVariable} is not set: it must be the API server's port, a number from 1 to 65535 (the kubelet sets both).");
        }

        if (!int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out var portNumber) || portNumber is < 1 or > 65535)
        {
            throw new InvalidOperationException(
                $"{inAPod} {ServicePortVariable} = '{port}' is not a valid port: it must be a number from 1 to 65535 (the kubelet sets both).");
        }

        if (Uri.CheckHostName(host) is UriHostNameType.Unknown or UriHostNameType.Basic)
        {
            throw new InvalidOperationException(
                $"{ServiceHostVariable} = '{host}' is not a valid host: it must be the API server's IP address or DNS name (the kubelet sets it).");
        }

        // UriBuilder brackets an IPv6 host (KUBERNETES_SERVICE_HOST=fd00::1 in IPv6 clusters).
        return new UriBuilder(Uri.UriSchemeHttps, host, portNumber).Uri;
    }

    private static KubernetesApiSource Kubeconfig(string path, string what, KubernetesResolverOptions options) =>
        new(KubernetesApiSourceKind.Kubeconfig, null, path, DefaultNamespace(options, CheckKubeconfig(path, what)));

    private static KubernetesClientConfiguration BuildFromKubeconfig(string path)
    {
        var config = KubernetesClientConfiguration.LoadKubeConfig(path);
        var user = CurrentUser(config);

        // kubectl's users[].user.tokenFile (used when token is empty), which the client library does not read: give the
        // library a stand-in token so that it accepts the user, then read the file on every request instead.
        var tokenFile = user is { UserCredentials: { } credentials } && string.IsNullOrWhiteSpace(credentials.Token)
            ? ReadTokenFile(path, user.Name)
            : null;
        if (tokenFile is not null)
        {
            user!.UserCredentials.Token = "token-file";
        }

        var configuration = KubernetesClientConfiguration.BuildConfigFromConfigObject(config);
        if (tokenFile is not null && configuration.TokenProvider is null)
        {
            configuration.AccessToken = null;
            configuration.TokenProvider = new ServiceAccountTokenProvider(tokenFile, required: true,
                $"The tokenFile '{tokenFile}' of user '{user!.Name}' in kubeconfig '{path}'");
        }

        return configuration;
    }

    private static User? CurrentUser(K8SConfiguration config)
    {
        var context = config.Contexts?.FirstOrDefault(c => string.Equals(c.Name, config.CurrentContext, StringComparison.OrdinalIgnoreCase))?.ContextDetails;
        return string.IsNullOrWhiteSpace(context?.User)
            ? null
            : config.Users?.FirstOrDefault(u => string.Equals(u.Name, context.User, StringComparison.OrdinalIgnoreCase));
    }

    /// <summary>The <c>tokenFile</c> of user <paramref name="userName"/>, relative to the kubeconfig's directory, or null.</summary>
    private static string? ReadTokenFile(string kubeconfigPath, string userName)
    {
        var yaml = new YamlStream();
        using (var reader = new StreamReader(kubeconfigPath))
        {
            yaml.Load(reader);
        }

        if (yaml.Documents.Count == 0 || yaml.Documents[0].RootNode is not YamlMappingNode root ||
            !root.Children.TryGetValue(new YamlScalarNode("users"), out var users) || users is not YamlSequenceNode sequence)
        {
            return null;
        }

        foreach (var entry in sequence.OfType<YamlMappingNode>())
        {
            if (entry.Children.TryGetValue(new YamlScalarNode("name"), out var name) && name is YamlScalarNode { Value: { } value } &&
                string.Equals(value, userName, StringComparison.OrdinalIgnoreCase) &&
                entry.Children.TryGetValue(new YamlScalarNode("user"), out var user) && user is YamlMappingNode userNode &&
                userNode.Children.TryGetValue(new YamlScalarNode("tokenFile"), out var file) && file is YamlScalarNode { Value: { Length: > 0 } tokenFile })
            {
                return Path.GetFullPath(tokenFile, Path.GetDirectoryName(Path.GetFullPath(kubeconfigPath))!);
            }
        }

        return null;
    }
}

/// <summary>Where the API server comes from (see <see cref="KubernetesClientConfigurationFactory.Resolve"/>).</summary>
internal enum KubernetesApiSourceKind
{
    /// <summary>A kubeconfig file: <see cref="KubernetesApiSource.KubeconfigPath"/>.</summary>
    Kubeconfig,

    /// <summary><see cref="KubernetesResolverOptions.ApiServer"/>; the service account's token and CA when present.</summary>
    ApiServer,

    /// <summary>In a pod: the service account's token and CA are required.</summary>
    InCluster,
}

/// <summary>The result of <see cref="KubernetesClientConfigurationFactory.Resolve"/>; immutable.</summary>
internal sealed record KubernetesApiSource(KubernetesApiSourceKind Kind, Uri? Server, string? KubeconfigPath, string DefaultNamespace);
