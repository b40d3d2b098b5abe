using ConnectionRefresh.Kubernetes.Internal;
using Grpc.Net.Client.Balancer;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>
/// A resolver created the way grpc-dotnet creates it: by <see cref="KubernetesResolverFactory"/> (its public constructor,
/// as DI calls it; <c>CreateResolver</c> is what <c>Create</c> runs), so the API client is configured by the production code from the options and an environment that
/// the test supplies instead of the process-wide one. Captures results, logs and the error counter.
/// </summary>
internal sealed class FactoryResolverHarness : IDisposable
{
    private readonly FallbackMeterFactory _meters = new();
    private readonly ILoggerFactory _loggerFactory;
    private readonly KubernetesResolverFactory _factory;

    public FactoryResolverHarness(KubernetesResolverOptions options, IReadOnlyDictionary<string, string> environment, string target = "kubernetes:///greeter:8080")
    {
        Logs = new FakeLoggerProvider();
        _loggerFactory = LoggerFactory.Create(builder => builder.AddProvider(Logs).SetMinimumLevel(LogLevel.Debug));
        Errors = new MetricCollector<long>(_meters, "ConnectionRefresh.Kubernetes", "connectionrefresh.kubernetes.errors");
        _factory = new KubernetesResolverFactory(Microsoft.Extensions.Options.Options.Create(options), new KubernetesResolverMetrics(_meters),
            environment: new EnvironmentReader(name => environment.GetValueOrDefault(name)));
        Resolver = _factory.CreateResolver(new Uri(target), _loggerFactory);
        Resolver.Start(Results.Add);
    }

    public KubernetesResolver Resolver { get; }

    public PublishedResults Results { get; } = new();

    public FakeLoggerProvider Logs { get; }

    public MetricCollector<long> Errors { get; }

    public ResolverResult? Last => Results.Last;

    /// <inheritdoc cref="PublishedResults.LastAddresses"/>
    public HashSet<string>? LastAddresses => Results.LastAddresses;

    public void Dispose()
    {
        Resolver.Dispose();
        Resolver.Completion.Wait(TimeSpan.FromSeconds(30));
        _factory.Dispose();
        Errors.Dispose();
        _loggerFactory.Dispose();
        Logs.Dispose();
        _meters.Dispose();
    }
}
