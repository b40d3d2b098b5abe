using ConnectionRefresh.Testing;
using Grpc.Core;

namespace ConnectionRefresh.Tests.Scenarios;

/// <summary>
/// Pod churn under load, end to end: AddConnectionRefresh clients against a <see cref="SimulatedCluster"/> (real Kestrel
/// pods behind a kube-proxy-like ClusterIP) that rolls, kills, black-holes and scales out.
/// </summary>
public sealed class ClusterScenarioTests
{
    [Fact]
    public async Task RollingUpdate_GracefulStopsUnderLoad_ZeroFailedCalls()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 3 });
        var clients = Enumerable.Range(0, 3).Select(_ => new ScenarioClient(cluster.Address, o => o.MaxConnectionAge = TimeSpan.FromSeconds(2))).ToList();
        try
        {
            await using var load = ScenarioLoad.Start(clients, workers: 4, delayMs: 20, callDeadline: TimeSpan.FromSeconds(30));
            await WaitForCallsAsync(load, 100);

            await cluster.RollingUpdateAsync(TimeSpan.FromMilliseconds(300));
            var rolledAt = load.Now;
            await WaitForCallsAsync(load, load.Calls.Count + 200);
            var serverFailures = cluster.Summary().FailedCalls; // Before the stop, which cancels the calls then running.
            await load.StopAsync();

            // Every pod stopped gracefully (GOAWAY, running calls finish): not a single call may fail.
            Assert.Empty(load.Failures);
            // The load really moved: calls started after the update (every old pod has exited) were served by the
            // replacement pods. Counted by start: a reply an old pod sent just before it exited may arrive after rolledAt.
            var replacements = cluster.Pods.Select(p => p.Name).ToHashSet();
            var afterUpdate = load.Calls.Where(c => c.Error is null && c.Started >= rolledAt).ToList();
            Assert.NotEmpty(afterUpdate);
            Assert.All(afterUpdate, c => Assert.Contains(c.Instance!, replacements));
            Assert.Equal(0, serverFailures);
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
        }
    }

    [Fact]
    public async Task KillPod_UnderLoad_OnlyInFlightCallsFailAndCallsSucceedWithin2Seconds()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 3 });
        var clients = Enumerable.Range(0, 3).Select(_ => new ScenarioClient(cluster.Address, o => o.MaxConnectionAge = TimeSpan.FromSeconds(30))).ToList();
        const int Workers = 4;
        try
        {
            await using var load = ScenarioLoad.Start(clients, Workers, delayMs: 50, callDeadline: TimeSpan.FromSeconds(30));
            await WaitForCallsAsync(load, 100);
            var victim = cluster.Pods.OrderByDescending(p => p.OpenConnections).First();

            var killStarted = load.Now;
            await cluster.KillPodAsync(victim);
            var killed = load.Now;
            await Poll.UntilAsync(() => load.Now > killed + 3, "3 s of load after the kill", TimeSpan.FromSeconds(60));
            await load.StopAsync();

            var failures = load.Failures;
            Assert.NotEmpty(failures); // The victim was the pod with connections, so calls were in flight on it.
            // Failures limited to the calls in flight on the killed pod: each worker has one call in flight at a time, so at
            // most one failure per worker of the clients connected to it (all clients at most), and each one had started
            // before the kill was over.
            Assert.InRange(failures.Count, 1, clients.Count * Workers);
            Assert.All(failures, f => Assert.True(f.Started <= killed, $"a call started at {f.Started:0.000} s, after the kill ({killed:0.000} s), failed"));
            // A reset connection is reported as Unavailable, which retry policies retry.
            Assert.All(failures, f => Assert.Equal(StatusCode.Unavailable, f.Error!.StatusCode));
            // Calls succeed again within 2 s of the kill, for every client, including those whose connection was reset.
            for (var i = 0; i < clients.Count; i++)
            {
                var firstSuccess = load.Calls.Where(c => c.Client == i && c.Error is null && c.Started >= killed).Min(c => c.Ended);
                Assert.True(firstSuccess - killStarted < 2, $"client {i}: first success {firstSuccess - killStarted:0.000} s after the kill began");
            }
            Assert.Contains(load.Calls, c => c.Error is null && c.Started > killed + 2); // And keep succeeding afterwards.
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
        }
    }

    [Fact]
    public async Task BlackHole_UnderLoad_CallsRecoverWithinKeepAliveDelayPlusTimeout()
    {
        var keepAliveDelay = TimeSpan.FromSeconds(1);
        var keepAliveTimeout = TimeSpan.FromSeconds(1);
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 2 });
        var client = new ScenarioClient(cluster.Address, o =>
        {
            o.MaxConnectionAge = TimeSpan.FromMinutes(5); // No age rotation during the test: only keepalive can find the dead connection.
            o.KeepAlivePingDelay = keepAliveDelay;
            o.KeepAlivePingTimeout = keepAliveTimeout;
        });
        try
        {
            // Calls have a 60 s deadline: without keepalive they would hang for a minute.
            await using var load = ScenarioLoad.Start([client], workers: 4, delayMs: 20, callDeadline: TimeSpan.FromSeconds(60));
            await WaitForCallsAsync(load, 50);
            var victim = cluster.Pods.Single(p => p.OpenConnections > 0);

            cluster.BlackHole(victim);
            var blackHoled = load.Now;
            await cluster.SetReadyAsync(victim, false); // The endpoint goes, so a reconnect lands on the healthy pod.
            await Poll.UntilAsync(() => load.Calls.Any(c => c.Error is null && c.Started > blackHoled), "a call succeeded after the black-hole", TimeSpan.FromSeconds(60));
            await WaitForCallsAsync(load, load.Calls.Count + 100);
            await load.StopAsync();

            var recovery = load.Calls.Where(c => c.Error is null && c.Started > blackHoled).Min(c => c.Ended) - blackHoled;
            // Bound: ping delay (1 s) + ping timeout (1 s) + 4 s slack. The slack covers SocketsHttpHandler's heartbeat, which
            // checks pings about once a second, a reconnect, and scheduling delays on a loaded 2-core machine; it is still far
            // below the 60 s the calls would hang without keepalive.
            var bound = (keepAliveDelay + keepAliveTimeout).TotalSeconds + 4;
            Assert.True(recovery < bound, $"recovered after {recovery:0.00} s, bound {bound:0.00} s");
            Assert.All(load.Failures, f => Assert.True(f.Ended - blackHoled < bound, $"a call failed {f.Ended - blackHoled:0.00} s after the black-hole"));
            Assert.All(load.Failures, f => Assert.Equal(StatusCode.Unavailable, f.Error!.StatusCode));
        }
        finally
        {
            client.Dispose();
        }
    }

    [Fact]
    public async Task ScaleOut_SeveralClientReplicas_NewPodsReachFairShareWithinFewAges()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 3 });
        await AssertScaleOutReachesNewPodsAsync(cluster);
    }

    [SkippableFact]
    public async Task ScaleOut_KubeProxyIptablesMode_NewPodsReachFairShareWithinFewAges()
    {
        Skip.IfNot(KubeProxySupport.IsIptablesSupported(out var reason), reason);
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 3, ProxyMode = KubeProxyMode.Iptables });
        await AssertScaleOutReachesNewPodsAsync(cluster);
    }

    private static async Task AssertScaleOutReachesNewPodsAsync(SimulatedCluster cluster)
    {
        var age = TimeSpan.FromSeconds(1);
        var clients = Enumerable.Range(0, 4).Select(_ => new ScenarioClient(cluster.Address, o =>
        {
            o.MaxConnectionAge = age;
            o.ConnectionsPerEndpoint = 4;
        })).ToList();
        try
        {
            await using var load = ScenarioLoad.Start(clients, workers: 4, delayMs: 20, callDeadline: TimeSpan.FromSeconds(30));
            await WaitForCallsAsync(load, 100);
            var oldPods = cluster.Pods.Select(p => p.Name).ToHashSet();

            await cluster.ScaleAsync(6);
            var scaledAt = load.Now;
            var newPods = cluster.Pods.Select(p => p.Name).Where(n => !oldPods.Contains(n)).ToList();
            // Window: from 2 ages after the scale-out (every connection has re-picked by then: age × 1.1 jitter) for 4 s.
            var from = scaledAt + 2 * age.TotalSeconds;
            var to = from + 4;
            await Poll.UntilAsync(() => load.Now > to, "the measurement window has passed", TimeSpan.FromSeconds(60));
            await load.StopAsync();

            Assert.Empty(load.Failures);
            // 4 clients × 4 connections re-pick a uniformly random pod about once per age: ~64 independent picks in the 4 s
            // window, each landing on a new pod with p = 1/2; calls spread evenly over a client's connections, so the new pods'
            // share of calls ≈ Binomial(64, 1/2)/64: mean 0.5, sd 0.0625. [0.25, 0.75] is 4 sd either side: a false failure
            // < 1e-4. With default clients (one pinned connection each) the share stays 0.
            var share = load.ShareOf(newPods, from, to);
            Assert.InRange(share, 0.25, 0.75);
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
        }
    }

    private static Task WaitForCallsAsync(ScenarioLoad load, int count) =>
        Poll.UntilAsync(() => load.Calls.Count >= count, $"{count} calls completed", TimeSpan.FromSeconds(60));
}
