using ConnectionRefresh.Kubernetes.Tests.Fakes;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Microsoft.Extensions.Time.Testing;

namespace ConnectionRefresh.Kubernetes.Tests;

/// <summary>
/// Terminating endpoints, end to end: a <see cref="SimulatedCluster"/> of real Kestrel pods whose stops have a preStop hook
/// (held on a fake clock), published by <see cref="SimulatedKubernetesApi.MirrorEndpoints"/> as the EndpointSlice controller
/// does (a stopping pod is <c>ready: false, serving: true, terminating: true</c>), and a real GrpcChannel with the resolver
/// and round_robin. kube-proxy's rule applies: ready endpoints only; serving terminating ones only when none is ready.
/// </summary>
public sealed class KubernetesResolverTerminatingTests
{
    private static readonly TimeSpan PreStop = TimeSpan.FromSeconds(30);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Calls_PodTerminatingWhileOthersAreReady_GetsNoNewCallsAndNoCallFails(bool includeTerminating)
    {
        await using var setup = await MirroredCluster.StartAsync(replicas: 3, includeTerminating);
        await using var loop = new CallLoop(setup.Client);
        await Poll.UntilAsync(() => setup.Cluster.Pods.All(p => loop.Total.ContainsKey(p.Name)), "all pods serve calls");

        // The pod stays in its preStop hook (the fake clock does not move): it still listens and would answer, so any
        // call it serves from now on was sent to it by the client.
        var victim = setup.Cluster.Pods[0];
        var stop = setup.Cluster.StopPodAsync(victim);
        await loop.WaitForQuietAsync(victim, calls: 300);
        var servedWhenDropped = victim.CallsServed;
        await loop.WaitForCallsAsync(1000);

        Assert.Equal(servedWhenDropped, victim.CallsServed);
        Assert.Equal(SimulatedPodState.Terminating, victim.State);
        Assert.All(setup.Cluster.ReadyPods, p => Assert.True(loop.Total.ContainsKey(p.Name)));

        setup.Time.Advance(PreStop);
        await Poll.WithTimeout(stop, "the pod to exit after its preStop hook");
        await loop.WaitForCallsAsync(200);
        Assert.True(loop.Failures.IsEmpty, string.Join("\n", loop.Failures.Select(f => f.Message)));
    }

    [Fact]
    public async Task Calls_EveryPodTerminatingAndIncludeTerminatingEndpoints_ServedByTheServingTerminatingPods()
    {
        await using var setup = await MirroredCluster.StartAsync(replicas: 2, includeTerminating: true);
        await using var loop = new CallLoop(setup.Client);
        await Poll.UntilAsync(() => setup.Cluster.Pods.All(p => loop.Total.ContainsKey(p.Name)), "both pods serve calls");

        // The first pod stops: the ready one takes every call.
        var first = setup.Cluster.Pods[0];
        var second = setup.Cluster.Pods[1];
        var stops = new List<Task> { setup.Cluster.StopPodAsync(first) };
        await loop.WaitForQuietAsync(first, calls: 300);

        // The second stops too: no endpoint is ready, so both serving terminating endpoints are used again (kube-proxy's
        // fallback) while they still listen, instead of failing every call.
        stops.Add(setup.Cluster.StopPodAsync(second));
        var servedBefore = (first.CallsServed, second.CallsServed);
        await Poll.UntilAsync(() => first.CallsServed > servedBefore.Item1 && second.CallsServed > servedBefore.Item2,
            "both terminating pods receive calls again");
        Assert.Empty(setup.Cluster.ReadyPods);
        Assert.True(loop.Failures.IsEmpty, string.Join("\n", loop.Failures.Select(f => f.Message)));

        setup.Time.Advance(PreStop);
        await Poll.WithTimeout(Task.WhenAll(stops), "both pods to exit");
    }

    /// <summary>A cluster on a fake clock with a preStop hook, its mirror in a fake API server, and a resolver client.</summary>
    private sealed class MirroredCluster(FakeTimeProvider time, SimulatedCluster cluster, SimulatedKubernetesApi api, IDisposable mirror, ResolverClient client, string account)
        : IAsyncDisposable
    {
        public FakeTimeProvider Time => time;

        public SimulatedCluster Cluster => cluster;

        public Greeter.GreeterClient Client => client.Client;

        public static async Task<MirroredCluster> StartAsync(int replicas, bool includeTerminating)
        {
            var time = new FakeTimeProvider();
            var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions
            {
                Replicas = replicas,
                TimeProvider = time,
                PreStopDelay = PreStop,
                TerminationGracePeriod = PreStop + TimeSpan.FromSeconds(10),
            });
            var api = await SimulatedKubernetesApi.StartAsync();
            var mirror = api.MirrorEndpoints(cluster);
            var account = Directory.CreateTempSubdirectory("k8s-term-").FullName;
            var client = ResolverClient.Create(api.Url, account, configure: o => o.IncludeTerminatingEndpoints = includeTerminating);
            return new MirroredCluster(time, cluster, api, mirror, client, account);
        }

        public async ValueTask DisposeAsync()
        {
            await client.DisposeAsync();
            mirror.Dispose();
            await api.DisposeAsync();
            await cluster.DisposeAsync();
            Directory.Delete(account, recursive: true);
        }
    }
}
