using Grpc.Net.Client.Balancer;
using Grpc.Net.Client.Configuration;
using k8s;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// The grpc-dotnet <see cref="ResolverFactory"/> for the <c>kubernetes</c> scheme. One Kubernetes API client (one
/// connection pool) is shared by all resolvers. Where the API server comes from is decided when the first resolver is
/// created: a configuration mistake (no API server, a missing or broken kubeconfig) makes that <see cref="Create"/> throw,
/// naming the setting or file, and is decided again on the next one. The API client itself is built on the first request:
/// what can fix itself (a credential plugin that fails, a service account token or CA not mounted yet) is retried by the
/// resolvers with their backoff, and calls fail <c>Unavailable</c> meanwhile.
/// Disposing it (with the service provider) stops every resolver it created: Grpc.Net.ClientFactory never disposes its
/// channels, so their resolvers would otherwise retry with the disposed API client for the life of the process.
/// Thread-safe: the source and the shared client are set once under <c>_lock</c>; everything else is immutable.
/// </summary>
internal sealed class KubernetesResolverFactory : ResolverFactory, IDisposable
{
    private readonly KubernetesResolverOptions _options;
    private readonly KubernetesResolverMetrics _metrics;
    private readonly TimeProvider _time;
    private readonly Func<double> _random;
    private readonly EnvironmentReader _environment;
    private readonly Lock _lock = new();
    private readonly IEndpointSliceClient? _givenClient;
    // Cancelled on Dispose: stops every resolver this factory created (see KubernetesResolver's constructor).
    private readonly CancellationTokenSource _stopping = new();
    private KubernetesApiSource? _source;
    private DeferredEndpointSliceClient? _client;

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
        _environment = environment ?? EnvironmentReader.Process;
        _options = options.Value;
        _metrics = metrics;
        _time = timeProvider ?? TimeProvider.System;
#pragma warning disable CA5394 // Jitter, not security.
        _random = Random.Shared.NextDouble;
#pragma warning restore CA5394
    }

    /// <summary>For tests: a given API client and random source.</summary>
    internal KubernetesResolverFactory(KubernetesResolverOptions options, KubernetesResolverMetrics metrics, TimeProvider timeProvider, IEndpointSliceClient client, Func<double> random)
    {
        _options = options;
        _metrics = metrics;
        _time = timeProvider;
        _random = random;
        _environment = EnvironmentReader.Process;
        _givenClient = client;
    }

    /// <inheritdoc />
    public override string Name => KubernetesResolverDefaults.Scheme;

    /// <inheritdoc />
    public override Resolver Create(ResolverOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        // grpc-dotnet (2.85) prefers a resolver's load-balancing policy over the channel's own ServiceConfig, and without
        // either it uses pick_first: every call to one pod. So round_robin is published only for a channel that names no
        // policy and lets resolvers supply one. Method configs (retry, hedging) come from the channel's options either way.
        var channelPolicy = options.ChannelOptions.ServiceConfig?.LoadBalancingConfigs.Count > 0;
        var resolver = CreateResolver(options.Address, options.LoggerFactory,
            channelPolicy || options.DisableServiceConfig ? null : RoundRobinServiceConfig());
        if (!channelPolicy && options.DisableServiceConfig)
        {
            KubernetesResolverLog.PickFirstOnly(options.LoggerFactory.CreateLogger<KubernetesResolver>(), resolver.Service, resolver.Namespace);
        }

        return resolver;
    }

    /// <summary>The service config published with every address list: <c>round_robin</c>, one connection per pod.</summary>
    internal static ServiceConfig RoundRobinServiceConfig() => new() { LoadBalancingConfigs = { new RoundRobinConfig() } };

    /// <summary><see cref="Create"/> without <see cref="ResolverOptions"/>, whose constructor grpc-dotnet keeps internal (tests).</summary>
    /// <param name="address">The channel's target.</param>
    /// <param name="loggerFactory">The channel's logger factory.</param>
    /// <param name="serviceConfig">Published with every address list; <see langword="null"/> for none.</param>
    internal KubernetesResolver CreateResolver(Uri address, ILoggerFactory loggerFactory, ServiceConfig? serviceConfig = null)
    {
        var target = KubernetesTarget.Parse(address);
        IEndpointSliceClient client;
        string defaultNamespace;
        if (_givenClient is not null)
        {
            client = _givenClient;
            defaultNamespace = KubernetesClientConfigurationFactory.DefaultNamespace(_options);
        }
        else
        {
            (client, defaultNamespace) = Source();
        }

        return new KubernetesResolver(target, target.Namespace ?? defaultNamespace, client, _options, _metrics, _time, _random,
            loggerFactory.CreateLogger<KubernetesResolver>(), serviceConfig, _stopping.Token);
    }

    public void Dispose()
    {
        _stopping.Cancel();
        lock (_lock)
        {
            _client?.Dispose();
        }
    }

    /// <summary>
    /// Where to set <c>ApiServer</c> or <c>KubeconfigPath</c>: the keys of the section the options were bound from (the
    /// default one or the one given to <c>AddKubernetesResolver(section)</c>), else the properties. Naming the default
    /// section's keys to a user who bound another one sent them to a section that is never read.
    /// </summary>
    private string WhereToSet()
    {
        const string ApiServer = nameof(KubernetesResolverOptions.ApiServer);
        const string KubeconfigPath = nameof(KubernetesResolverOptions.KubeconfigPath);
        const string Properties = $"{nameof(KubernetesResolverOptions)}.{ApiServer} or .{KubeconfigPath}";
        return _options.ConfigurationSectionPath is { Length: > 0 } section
            ? $"{section}:{ApiServer} or {section}:{KubeconfigPath} (in code, {Properties})"
            : Properties;
    }

    private (IEndpointSliceClient Client, string DefaultNamespace) Source()
    {
        lock (_lock)
        {
            if (_source is null)
            {
                KubernetesApiSource source;
                try
                {
                    source = KubernetesClientConfigurationFactory.Resolve(_options, _environment);
                }
                catch (InvalidOperationException ex)
                {
                    throw new InvalidOperationException(
                        $"The Kubernetes resolver could not configure its API client: {ex.Message} In a pod, {KubernetesClientConfigurationFactory.ServiceHostVariable}/" +
                        $"{KubernetesClientConfigurationFactory.ServicePortVariable} and the service account in '{_options.ServiceAccountPath}' are used; elsewhere set " +
                        $"{WhereToSet()}.", ex);
                }

                _client = new DeferredEndpointSliceClient(() => new k8s.Kubernetes(KubernetesClientConfigurationFactory.Build(source, _options)));
                _source = source;
            }

            return (_client!, _source.DefaultNamespace);
        }
    }
}
