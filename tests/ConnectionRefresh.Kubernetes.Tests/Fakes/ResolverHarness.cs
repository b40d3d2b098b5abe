using System.Collections.Concurrent;
using ConnectionRefresh.Kubernetes.Internal;
using Grpc.Core;
using Grpc.Net.Client.Balancer;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>A started <see cref="KubernetesResolver"/> with its published results captured.</summary>
internal sealed class ResolverHarness : IDisposable
{
    private readonly FallbackMeterFactory _meters = new();

    public ResolverHarness(IEndpointSliceClient client, string target = "kubernetes:///greeter.default:grpc",
        KubernetesResolverOptions? options = null, TimeProvider? time = null, Func<double>? random = null, ILogger? logger = null)
    {
        var parsed = KubernetesTarget.Parse(new Uri(target));
        Resolver = new KubernetesResolver(parsed, parsed.Namespace ?? "default", client, options ?? new KubernetesResolverOptions(),
            new KubernetesResolverMetrics(_meters), time ?? TimeProvider.System, random ?? (() => 0.5), logger ?? NullLogger.Instance);
        Resolver.Start(Results.Enqueue);
    }

    public KubernetesResolver Resolver { get; }

    public ConcurrentQueue<ResolverResult> Results { get; } = new();

    public ResolverResult? Last => Results.LastOrDefault();

    /// <summary>The addresses of the last OK result, as "ip:port", or null before the first one.</summary>
    public HashSet<string>? LastAddresses =>
        Results.LastOrDefault(r => r.Status.StatusCode == StatusCode.OK)?.Addresses!.Select(a => a.ToString()).ToHashSet();

    public void Dispose()
    {
        Resolver.Dispose();
        Resolver.Completion.Wait(TimeSpan.FromSeconds(30));
        _meters.Dispose();
    }
}
