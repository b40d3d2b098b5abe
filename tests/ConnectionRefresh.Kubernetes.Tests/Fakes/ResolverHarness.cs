using ConnectionRefresh.Kubernetes.Internal;
using Grpc.Net.Client.Balancer;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>A started <see cref="KubernetesResolver"/> with its published results captured.</summary>
internal sealed class ResolverHarness : IDisposable
{
    private readonly FallbackMeterFactory _meters = new();

    public ResolverHarness(IEndpointSliceClient client, string target = "kubernetes:///greeter.default:grpc",
        KubernetesResolverOptions? options = null, TimeProvider? time = null, Func<double>? random = null, ILogger? logger = null,
        KubernetesResolverMetrics? metrics = null)
    {
        var parsed = KubernetesTarget.Parse(new Uri(target));
        Resolver = new KubernetesResolver(parsed, parsed.Namespace ?? "default", client, options ?? new KubernetesResolverOptions(),
            metrics ?? new KubernetesResolverMetrics(_meters), time ?? TimeProvider.System, random ?? (() => 0.5), logger ?? NullLogger.Instance);
        Resolver.Start(Results.Add);
    }

    public KubernetesResolver Resolver { get; }

    /// <summary>The meter factory of the resolver's metrics (unless the test gave its own): the scope for a MetricCollector.</summary>
    public FallbackMeterFactory Meters => _meters;

    public PublishedResults Results { get; } = new();

    public ResolverResult? Last => Results.Last;

    /// <inheritdoc cref="PublishedResults.LastAddresses"/>
    public HashSet<string>? LastAddresses => Results.LastAddresses;

    public void Dispose()
    {
        Resolver.Dispose();
        Resolver.Completion.Wait(TimeSpan.FromSeconds(30));
        _meters.Dispose();
    }
}
