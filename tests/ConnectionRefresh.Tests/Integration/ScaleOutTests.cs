using ConnectionRefresh.Testing;
using ConnectionRefresh.Tests.Infrastructure;

namespace ConnectionRefresh.Tests.Integration;

/// <summary>
/// Scale-out 2 → 4 pods behind a per-connection balancer (what kube-proxy does), with 4 client replicas under
/// load: refreshed connections reach the new pods within a few ages, default ones never do.
/// </summary>
public sealed class ScaleOutTests
{
    private static readonly TimeSpan Window = TimeSpan.FromSeconds(8);

    private static async Task<(LoadResult Result, string[] NewPods)> ScaleOutUnderLoad(Func<Uri, GreeterClientHost> createClient)
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 2 });
        var hosts = Enumerable.Range(0, 4).Select(_ => createClient(cluster.Address)).ToList();
        try
        {
            var clients = hosts.Select(h => h.Client).ToList();
            await Load.RunAsync(clients, concurrency: 2, TimeSpan.FromSeconds(1));
            var newPods = new[] { await cluster.AddPodAsync(), await cluster.AddPodAsync() }.Select(p => p.Name).ToArray();
            var result = await Load.RunAsync(clients, concurrency: 2, Window);
            return (result, newPods);
        }
        finally
        {
            hosts.ForEach(h => h.Dispose());
        }
    }

    [Fact]
    public async Task AddConnectionRefresh_ScaleOut_NewPodsGetFairShare()
    {
        var (result, newPods) = await ScaleOutUnderLoad(address => GreeterClientHost.WithRefresh(address, o =>
        {
            o.MaxConnectionAge = TimeSpan.FromSeconds(1);
            o.ConnectionsPerEndpoint = 4;
        }));

        Assert.Empty(result.Failures);
        // 4 clients × 4 slots reconnect about every second: ~110 uniform picks over 4 pods in the 8 s window, the
        // first second still on the old pods. Expected share of the two new pods ≈ 0.44 (sd ≈ 0.05), of each
        // ≈ 0.22 (sd ≈ 0.04): the bounds 0.20 and 0.05 are more than 4 sd away, a false failure < 1e-4.
        Assert.InRange(result.ShareOf(newPods), 0.20, 1.0);
        Assert.All(newPods, pod => Assert.InRange(result.ShareOf([pod]), 0.05, 1.0));
    }

    [Fact]
    public async Task AddGrpcClientDefaults_ScaleOut_NewPodsGetNothing()
    {
        var (result, newPods) = await ScaleOutUnderLoad(GreeterClientHost.Plain);

        Assert.Empty(result.Failures);
        // The problem, demonstrated: one connection per client, pinned for its 2-minute lifetime, so the new pods
        // receive no call in the window (a connection could only move if it broke).
        Assert.InRange(result.ShareOf(newPods), 0.0, 0.01);
    }
}
