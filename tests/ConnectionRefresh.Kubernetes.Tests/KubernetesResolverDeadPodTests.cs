using ConnectionRefresh.Kubernetes.Tests.Fakes;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;

namespace ConnectionRefresh.Kubernetes.Tests;

/// <summary>
/// src/ConnectionRefresh.Kubernetes/README.md, "Dead pods: set keepalive": a pod whose node is cut off stays in the EndpointSlices, and grpc-dotnet keeps
/// its subchannel Ready until an HTTP/2 keepalive ping finds the connection dead. With the README's snippet (keepalive set in
/// place on the channel's own SocketsHttpHandler, so the balancer stays on) round_robin drops the pod once the ping times out.
/// </summary>
public sealed class KubernetesResolverDeadPodTests
{
    private const int Pods = 3;

    [Fact]
    public async Task BlackHoledPodStillInTheEndpoints_ReadmeKeepAlive_LeavesTheRotationOnceThePingTimesOut()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = Pods, TerminationGracePeriod = TimeSpan.Zero });
        await using var api = await SimulatedKubernetesApi.StartAsync("token-1");
        using var mirror = api.MirrorEndpoints(cluster);
        using var account = new ServiceAccountDirectory("token-1");
        await using var resolverClient = ResolverClient.Create(api.Url, account.Path, configureClient: client =>
            client.ConfigurePrimaryHttpMessageHandler((handler, _) =>
            {
                // The README's snippet, with the shortest times SocketsHttpHandler takes, for a short test.
                var sockets = (SocketsHttpHandler)handler;
                sockets.KeepAlivePingDelay = TimeSpan.FromSeconds(1);
                sockets.KeepAlivePingTimeout = TimeSpan.FromSeconds(1);
                sockets.KeepAlivePingPolicy = HttpKeepAlivePingPolicy.WithActiveRequests;
            }));
        var greeter = resolverClient.Client;

        // Each call on its own connection's turn: round_robin over the three pods (the balancer is on).
        await Poll.UntilAsync(async () =>
        {
            await greeter.SayHelloAsync(new HelloRequest { Name = "warm-up" }, deadline: DateTime.UtcNow.AddSeconds(5));
            return cluster.Pods.All(p => p.CallsServed > 0);
        }, "calls reach every pod");

        // The node is cut off; the pod stays ready in the EndpointSlices for the whole test, as until Kubernetes notices.
        var dead = cluster.Pods[0];
        cluster.BlackHole(dead);

        // round_robin picks each of its three subchannels in turn, so while the dead pod is in the rotation every third call
        // waits for its deadline and fails: a run of 5 × Pods successes in a row cannot happen. Once the ping (1 s + 1 s, checked
        // at most once a second: normally 3–5 s) ends the connection, the pod leaves the rotation, and as it answers no SYN,
        // it stays out. 60 s: a dozen times the normal detection, for a loaded machine.
        var inARow = 0;
        var failed = 0;
        await Poll.UntilAsync(async () =>
        {
            try
            {
                await greeter.SayHelloAsync(new HelloRequest { Name = "after" }, deadline: DateTime.UtcNow.AddSeconds(2));
                inARow++;
            }
            catch (RpcException)
            {
                failed++;
                inARow = 0;
            }

            return inARow >= 5 * Pods;
        }, "the black-holed pod leaves the rotation while it is still in the endpoints", TimeSpan.FromSeconds(60));

        Assert.Contains(cluster.ReadyPods, p => p.Name == dead.Name); // still published: the client found it dead on its own
        Assert.True(failed > 0, "no call went to the dead pod: the test did not exercise the dead connection");
    }
}
