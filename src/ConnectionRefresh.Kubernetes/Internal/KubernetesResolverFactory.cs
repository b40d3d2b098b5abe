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

    public KubernetesResolverFactory(IOptions<KubernetesResolverOptions> options, KubernetesResolverMetrics metrics, TimeProvider? timeProvider = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options.Value;
        _metrics = metrics;
        _time = timeProvider ?? TimeProvider.System;
#pragma warning disable CA5394 // Jitter, not security.
        _random = Random.Shared.NextDouble;
#pragma warning restore CA5394
        var kubernetes = new Lazy<IKubernetes>(() => CreateKubernetes());
        _kubernetes = kubernetes;
        _client = new Lazy<IEndpointSliceClient>(() => new KubernetesEndpointSliceClient(kubernetes.Value));
        _defaultNamespace = new Lazy<string>(() => KubernetesClientConfigurationFactory.DefaultNamespace(_options));
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
        var target = KubernetesTarget.Parse(options.Address);
        var ns = target.Namespace ?? _defaultNamespace.Value;
        return new KubernetesResolver(target, ns, _client.Value, _options, _metrics, _time, _random,
            options.LoggerFactory.CreateLogger<KubernetesResolver>());
    }

    public void Dispose()
    {
        if (_kubernetes is { IsValueCreated: true })
        {
            _kubernetes.Value.Dispose();
        }
    }

    private k8s.Kubernetes CreateKubernetes()
    {
        try
        {
            return new k8s.Kubernetes(KubernetesClientConfigurationFactory.Create(_options));
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            throw new InvalidOperationException(
                "The Kubernetes resolver could not configure its API client: not running in a pod and no usable kubeconfig. " +
                $"Set {KubernetesResolverDefaults.ConfigurationSection}:{nameof(KubernetesResolverOptions.ApiServer)} or :{nameof(KubernetesResolverOptions.KubeconfigPath)}.", ex);
        }
    }
}
