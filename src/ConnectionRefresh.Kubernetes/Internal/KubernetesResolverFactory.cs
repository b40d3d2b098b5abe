using Grpc.Net.Client.Balancer;
using k8s;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// The grpc-dotnet <see cref="ResolverFactory"/> for the <c>kubernetes</c> scheme. One Kubernetes API
/// client (one connection pool) is shared by all resolvers and created on first use.
/// Thread-safe: the lazy client and default namespace are created once; everything else is immutable.
/// </summary>
internal sealed class KubernetesResolverFactory : ResolverFactory, IDisposable
{
    private readonly KubernetesResolverOptions _options;
    private readonly KubernetesResolverMetrics _metrics;
    private readonly TimeProvider _time;
    private readonly Func<double> _random;
    private readonly Lazy<IKubernetes>? _kubernetes;
    private readonly Lazy<IEndpointSliceClient> _client;
    private readonly Lazy<string> _defaultNamespace;

    /// <param name="options">The options.</param>
    /// <param name="metrics">The metrics.</param>
    /// <param name="timeProvider">Delays; default the system clock.</param>
    /// <param name="environment">
    /// Where <c>KUBERNETES_SERVICE_HOST/PORT</c>, <c>KUBECONFIG</c> and <c>HOME</c> are read; default the process
    /// environment (tests register their own instead of changing the process-wide one).
    /// </param>
    public KubernetesResolverFactory(IOptions<KubernetesResolverOptions> options, KubernetesResolverMetrics metrics, TimeProvider? timeProvider = null,
        EnvironmentReader? environment = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var env = environment ?? EnvironmentReader.Process;
        _options = options.Value;
        _metrics = metrics;
        _time = timeProvider ?? TimeProvider.System;
#pragma warning disable CA5394 // Jitter, not security.
        _random = Random.Shared.NextDouble;
#pragma warning restore CA5394
        var configuration = new Lazy<KubernetesClientConfiguration>(() => CreateConfiguration(env));
        var kubernetes = new Lazy<IKubernetes>(() => new k8s.Kubernetes(configuration.Value));
        _kubernetes = kubernetes;
        _client = new Lazy<IEndpointSliceClient>(() => new KubernetesEndpointSliceClient(kubernetes.Value));
        _defaultNamespace = new Lazy<string>(() => KubernetesClientConfigurationFactory.DefaultNamespace(_options, configuration.Value));
    }

    /// <summary>For tests: a given API client and random source.</summary>
    internal KubernetesResolverFactory(KubernetesResolverOptions options, KubernetesResolverMetrics metrics, TimeProvider timeProvider, IEndpointSliceClient client, Func<double> random)
    {
        _options = options;
        _metrics = metrics;
        _time = timeProvider;
        _random = random;
        _client = new Lazy<IEndpointSliceClient>(client);
        _defaultNamespace = new Lazy<string>(() => KubernetesClientConfigurationFactory.DefaultNamespace(_options));
    }

    /// <inheritdoc />
    public override string Name => KubernetesResolverDefaults.Scheme;

    /// <inheritdoc />
    public override Resolver Create(ResolverOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return CreateResolver(options.Address, options.LoggerFactory);
    }

    /// <summary><see cref="Create"/> without <see cref="ResolverOptions"/>, whose constructor grpc-dotnet keeps internal (tests).</summary>
    internal KubernetesResolver CreateResolver(Uri address, ILoggerFactory loggerFactory)
    {
        var target = KubernetesTarget.Parse(address);
        var ns = target.Namespace ?? _defaultNamespace.Value;
        return new KubernetesResolver(target, ns, _client.Value, _options, _metrics, _time, _random,
            loggerFactory.CreateLogger<KubernetesResolver>());
    }

    public void Dispose()
    {
        if (_kubernetes is { IsValueCreated: true })
        {
            _kubernetes.Value.Dispose();
        }
    }

    private KubernetesClientConfiguration CreateConfiguration(EnvironmentReader environment)
    {
        try
        {
            return KubernetesClientConfigurationFactory.Create(_options, environment);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            throw new InvalidOperationException(
                $"The Kubernetes resolver could not configure its API client ({ex.Message}). In a pod, {KubernetesClientConfigurationFactory.ServiceHostVariable}/" +
                $"{KubernetesClientConfigurationFactory.ServicePortVariable} and the service account in '{_options.ServiceAccountPath}' are used; elsewhere set " +
                $"{KubernetesResolverDefaults.ConfigurationSection}:{nameof(KubernetesResolverOptions.ApiServer)} or :{nameof(KubernetesResolverOptions.KubeconfigPath)}.", ex);
        }
    }
}
