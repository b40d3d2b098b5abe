using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing.Tests.TestSupport;
using Grpc.Core;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;

namespace ConnectionRefresh.Testing.Tests;

/// <summary>The real kube-proxy (iptables) mode. Skips, with the reason, where it cannot run (not Linux, not root, no iptables).</summary>
public sealed class SimulatedClusterIptablesTests
{
    private static SimulatedClusterOptions Options(int replicas) => new() { Replicas = replicas, ProxyMode = KubeProxyMode.Iptables };

    private static void SkipIfUnsupported() =>
        Skip.IfNot(KubeProxySupport.IsIptablesSupported(out var reason), reason);

    [SkippableFact]
    public async Task StartAsync_Iptables_PodsAnswerThroughKernelDnat()
    {
        SkipIfUnsupported();
        await using var cluster = await SimulatedCluster.StartAsync(Options(3));

        Assert.NotNull(cluster.NetworkNamespace);
        Assert.Contains(cluster.NetworkNamespace, await ListNamespacesAsync());
        using var client = new TestClient(cluster.Address);
        var instance = await client.HelloAsync();
        Assert.Contains(instance, cluster.Pods.Select(p => p.Name));
        var rules = await RunAsync("ip", "netns", "exec", cluster.NetworkNamespace!, "iptables-save", "-t", "nat");
        Assert.Contains("KUBE-SVC-CRSIM -m statistic --mode random --probability 0.333333333", rules, StringComparison.Ordinal);
        Assert.Equal(3, cluster.Pods.Count(p => rules.Contains($"--to-destination 127.0.0.1:{p.Address.Port}", StringComparison.Ordinal)));
    }

    [SkippableFact]
    public async Task Address_Iptables_ManyNewConnectionsSpreadUniformly()
    {
        SkipIfUnsupported();
        const int Pods = 4;
        await using var cluster = await SimulatedCluster.StartAsync(Options(Pods));

        await SimulatedClusterTests.OpenConnectionsAsync(cluster, 2000);

        var counts = cluster.Pods.Select(p => p.ConnectionsAccepted).ToArray();
        // Same reasoning as the userspace test: the 1e-5 upper quantile of chi² with df = 3 (false failure 1 in 100,000).
        var chiSquare = Statistics.ChiSquareUniform(counts);
        Assert.True(chiSquare < Statistics.CriticalValue1e5(Pods - 1), $"chi² = {chiSquare:0.00} for counts [{string.Join(", ", counts)}]");
    }

    [SkippableFact]
    public async Task ScaleAsync_Iptables_ExistingConnectionPinnedAndNewConnectionsReachNewPods()
    {
        SkipIfUnsupported();
        await using var cluster = await SimulatedCluster.StartAsync(Options(2));
        using var client = new TestClient(cluster.Address);
        var first = await client.HelloAsync();

        await cluster.ScaleAsync(4);
        var instances = new HashSet<string>();
        for (var i = 0; i < 50; i++)
        {
            instances.Add(await client.HelloAsync());
        }

        Assert.Equal([first], instances);
        // 200 new connections over 4 pods: the chance that the two new pods get none is 2 × 0.5^200 (or less), i.e. never.
        await SimulatedClusterTests.OpenConnectionsAsync(cluster, 200);
        Assert.All(cluster.Pods.Where(p => p.Name is "greeter-3" or "greeter-4"), p => Assert.True(p.ConnectionsAccepted > 0, p.Name));
    }

    [SkippableFact]
    public async Task SetReadyAsync_Iptables_RulesRewrittenAndPodAvoided()
    {
        SkipIfUnsupported();
        await using var cluster = await SimulatedCluster.StartAsync(Options(2));
        var drained = cluster.Pods[0];

        await cluster.SetReadyAsync(drained, false);
        await SimulatedClusterTests.OpenConnectionsAsync(cluster, 100);

        Assert.Equal(0, drained.ConnectionsAccepted);
        Assert.Equal(100, cluster.Pods[1].ConnectionsAccepted);
    }

    [SkippableFact]
    public async Task KillPodAsync_Iptables_ConnectionReset()
    {
        SkipIfUnsupported();
        await using var cluster = await SimulatedCluster.StartAsync(Options(1));
        var pod = cluster.Pods[0];
        using var socket = await RawSockets.ConnectAsync(cluster.Address);
        await Poll.UntilAsync(() => pod.OpenConnections == 1, "the pod accepted the connection");
        await Poll.UntilAsync(() => cluster.Pods[0].OpenConnections == 1 && cluster.OpenConnections == 1, "the connection is attributed");

        await cluster.KillPodAsync(pod);

        var error = await Assert.ThrowsAsync<SocketException>(async () => await socket.ReceiveAsync(new byte[16], SocketFlags.None));
        Assert.Equal(SocketError.ConnectionReset, error.SocketErrorCode);
    }

    [SkippableFact]
    public async Task BlackHole_Iptables_CallFailsWithDeadlineExceeded()
    {
        SkipIfUnsupported();
        await using var cluster = await SimulatedCluster.StartAsync(Options(1));
        using var client = new TestClient(cluster.Address);
        await client.HelloAsync();

        cluster.BlackHole(cluster.Pods[0]);

        // 1 s deadline: a healthy call takes milliseconds.
        var error = await Assert.ThrowsAsync<RpcException>(() => client.HelloAsync(deadline: TimeSpan.FromSeconds(1)));
        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);
    }

    [SkippableFact]
    public async Task BlackHole_IptablesKernelPicksThePod_NewConnectionHangsWithoutReachingItAndOthersStillWork()
    {
        SkipIfUnsupported();
        await using var cluster = await SimulatedCluster.StartAsync(Options(2));
        var dead = cluster.Pods[0];
        var live = cluster.Pods[1];
        cluster.BlackHole(dead);

        // New connections until the kernel has picked each pod at least once (1/2 each; 40 tries fail with 2 × 0.5^40).
        Socket? held = null;
        var answered = 0;
        for (var attempt = 0; attempt < 40 && (held is null || answered == 0); attempt++)
        {
            var socket = await RawSockets.ConnectAsync(cluster.Address);
            await socket.SendAsync(Http2PrefaceAndSettings, SocketFlags.None);
            // A pod's SETTINGS come in milliseconds. 3.5 s of silence spans the first SYN retransmissions (1 s, then 1 s or
            // 2 s apart): they must go to the pod the kernel picked first (conntrack), not be balanced afresh (as with a drop
            // before conntrack confirms the connection) and reach the live pod.
            using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(3.5));
            try
            {
                Assert.True(await socket.ReceiveAsync(new byte[64], SocketFlags.None, wait.Token) > 0, "a pod's SETTINGS frame");
                answered++;
                socket.Dispose();
            }
            catch (OperationCanceledException) when (held is null)
            {
                held = socket;
            }
            catch (OperationCanceledException)
            {
                socket.Dispose();
            }
        }

        Assert.NotNull(held);
        Assert.True(answered > 0, "the live pod answered a new connection");
        Assert.Equal(0, dead.ConnectionsAccepted);
        Assert.True(live.ConnectionsAccepted >= answered, $"{live.ConnectionsAccepted} connections accepted, {answered} answered");
        // The held connection stays open (only the closed ones leave), its connect into the namespace still waiting.
        await Poll.UntilAsync(() => cluster.OpenConnections == 1, "only the held connection is open");
        Assert.Equal(1, await SynSentCountAsync(cluster));

        held.Dispose();

        // The client gave up: the ClusterIP lets go of its connection and of the connect into the namespace.
        await Poll.UntilAsync(() => cluster.OpenConnections == 0, "the ClusterIP released the connection the client closed");
        await Poll.UntilAsync(async () => await SynSentCountAsync(cluster) == 0, "the connect into the namespace was cancelled");
        Assert.Equal(0, dead.ConnectionsAccepted);
        using var client = new TestClient(cluster.Address);
        await cluster.SetReadyAsync(dead, false);
        Assert.Equal(live.Name, await client.HelloAsync());
    }

    [SkippableFact]
    public async Task BlackHole_IptablesKernelGivesUpTheConnect_ClientConnectionStaysOpenAndSilent()
    {
        SkipIfUnsupported();
        await using var cluster = await SimulatedCluster.StartAsync(Options(1));
        // Per namespace: one SYN retransmission, so the kernel gives up the connect into the namespace after ~3 s, not minutes.
        await RunAsync("ip", "netns", "exec", cluster.NetworkNamespace!, "sysctl", "-q", "-w", "net.ipv4.tcp_syn_retries=1");
        var pod = cluster.Pods[0];
        cluster.BlackHole(pod);
        using var socket = await RawSockets.ConnectAsync(cluster.Address);
        await socket.SendAsync(Http2PrefaceAndSettings, SocketFlags.None);
        await Poll.UntilAsync(async () => await SynSentCountAsync(cluster) == 1, "the connect into the namespace hangs");
        var receive = socket.ReceiveAsync(new byte[16], SocketFlags.None);

        await Poll.UntilAsync(async () => await SynSentCountAsync(cluster) == 0, "the kernel gave up the connect");

        // A dead node sends no reset: the client's connection stays open and silent until it gives up, as in userspace mode.
        await socket.SendAsync(Http2PrefaceAndSettings, SocketFlags.None);
        Assert.Equal(1, cluster.OpenConnections);
        // 1 s: a reset or FIN on loopback arrives in milliseconds.
        await Task.WhenAny(receive, Task.Delay(TimeSpan.FromSeconds(1)));
        Assert.False(receive.IsCompleted, $"the client's connection was closed or answered: {receive.Status}");
        Assert.Equal(1, cluster.OpenConnections);
        Assert.Equal(0, pod.ConnectionsAccepted);
    }

    [SkippableFact]
    public async Task DisposeAsync_IptablesConnectionHeldForABlackHoledPod_CancelsItsConnectAndCompletes()
    {
        SkipIfUnsupported();
        var cluster = await SimulatedCluster.StartAsync(Options(1));
        var name = cluster.NetworkNamespace!;
        var pod = cluster.Pods[0];
        cluster.BlackHole(pod);
        using var socket = await RawSockets.ConnectAsync(cluster.Address);
        await socket.SendAsync(Http2PrefaceAndSettings, SocketFlags.None);
        await Poll.UntilAsync(async () => await SynSentCountAsync(cluster) == 1, "the connect into the namespace hangs");

        await Poll.WithTimeout(cluster.DisposeAsync().AsTask(), "the disposal");

        Assert.Equal(0, cluster.OpenConnections);
        Assert.Equal(0, pod.ConnectionsAccepted);
        Assert.DoesNotContain(name, await ListNamespacesAsync());
        var closed = await Poll.WithTimeout(Record.ExceptionAsync(async () =>
        {
            if (await socket.ReceiveAsync(new byte[16], SocketFlags.None) != 0)
            {
                throw new InvalidOperationException("bytes arrived");
            }
        }), "the held connection to close");
        Assert.True(closed is null or SocketException { SocketErrorCode: SocketError.ConnectionReset }, closed?.ToString());
    }

    [SkippableFact]
    public async Task StopPodAsync_IptablesLastPod_RunningCallFinishes()
    {
        SkipIfUnsupported();
        await using var cluster = await SimulatedCluster.StartAsync(Options(1));
        var pod = cluster.Pods[0];
        using var client = new TestClient(cluster.Address);
        var running = client.HelloAsync(delayMs: 1500);
        await Poll.UntilAsync(() => pod.CallsActive == 1, "the slow call is running");

        // The only pod leaves the endpoints (no DNAT rule for the service remains) while its connection carries a call:
        // conntrack must keep that connection working until the call ends.
        await cluster.StopPodAsync(pod);

        Assert.Equal(pod.Name, await running);
        Assert.Equal(SimulatedPodState.Terminated, pod.State);
    }

    [SkippableFact]
    public async Task DisposeAsync_Iptables_RemovesNamespaceAndClosesPort()
    {
        SkipIfUnsupported();
        var cluster = await SimulatedCluster.StartAsync(Options(2));
        var name = cluster.NetworkNamespace!;
        var clusterIp = LoopbackListener.On(cluster.Address.Port);
        using var client = new TestClient(cluster.Address);
        await client.HelloAsync();

        await cluster.DisposeAsync();

        Assert.DoesNotContain(name, await ListNamespacesAsync());
        await clusterIp.UntilClosedAsync("the ClusterIP's");
        Assert.Equal(0, cluster.OpenConnections);
    }

    [SkippableFact]
    public async Task DisposeAsync_IptablesWhileRulesAreRewritten_PodOperationsEndQuietly()
    {
        SkipIfUnsupported();
        var cluster = await SimulatedCluster.StartAsync(Options(2));
        var name = cluster.NetworkNamespace!;
        var proxy = cluster.Iptables!;
        var rewriting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var disposeWaiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        proxy.BeforeRestore = () =>
        {
            rewriting.TrySetResult();
            return release.Task;
        };

        // One operation's rewrite holds the rule lock, a second one queues behind it (synchronously, before the call returns).
        var notReady = cluster.SetReadyAsync(cluster.Pods[0], false);
        await Poll.WithTimeout(rewriting.Task, "the rewrite holds the rule lock");
        var kill = cluster.KillPodAsync(cluster.Pods[1]);
        proxy.DisposeWaiting = () => disposeWaiting.TrySetResult();
        var disposal = cluster.DisposeAsync().AsTask();

        // The held rewrite goes on only once the disposal waits for the rule lock or (as before the fix, when it deleted the
        // namespace and disposed the lock under the rewrite: ObjectDisposedException here, the queued kill hung) has ended.
        await Poll.WithTimeout(Task.WhenAny(disposal, disposeWaiting.Task), "the disposal to reach the rule lock");
        release.TrySetResult();

        await Poll.WithTimeout(notReady, "the operation whose rewrite ran during the disposal");
        await Poll.WithTimeout(kill, "the operation whose rewrite waited for the rule lock");
        await Poll.WithTimeout(disposal, "the disposal");
        Assert.DoesNotContain(name, await ListNamespacesAsync());
    }

    [SkippableFact]
    public async Task Address_IptablesSourcePortOfAnAbandonedConnectionReused_NewConnectionGoesToThePodTheKernelPicked()
    {
        SkipIfUnsupported();
        await using var cluster = await SimulatedCluster.StartAsync(Options(2));
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var sourcePort = 0;
        cluster.Iptables!.ServiceSocketCreated = socket =>
        {
            // The ClusterIP's connections into the namespace from one source port; closed with RST (no TIME_WAIT), so the
            // port is free again at once, as it would be after a while in a long run.
            socket.LingerState = new LingerOption(true, 0);
            socket.Bind(new IPEndPoint(IPAddress.Loopback, sourcePort));
            sourcePort = ((IPEndPoint)socket.LocalEndPoint!).Port;
        };

        // 1: the pod side says which pod the kernel picked only after the ClusterIP side gave up and reset the client.
        cluster.AttributionTimeout = TimeSpan.FromMilliseconds(200);
        cluster.BeforePodAttribution = () => release.Task;
        using (var abandoned = await RawSockets.ConnectAsync(cluster.Address))
        {
            var error = await Assert.ThrowsAsync<SocketException>(async () => await abandoned.ReceiveAsync(new byte[16], SocketFlags.None));
            Assert.Equal(SocketError.ConnectionReset, error.SocketErrorCode);
        }

        release.TrySetResult();
        await Poll.UntilAsync(
            () => cluster.Pods.Sum(p => p.ConnectionsAccepted) == 1 && cluster.Pods.All(p => p.OpenConnections == 0),
            "the pod side of the abandoned connection has run");
        cluster.BeforePodAttribution = null;
        cluster.AttributionTimeout = TimeSpan.FromSeconds(10);
        var picked = cluster.Pods.Single(p => p.ConnectionsAccepted == 1);
        var other = cluster.Pods.Single(p => p != picked);
        await cluster.KillPodAsync(picked);

        // 2: the same source port; the kernel can only pick the other pod, and the connection must be pinned to it, not
        // to the killed pod the late answer for connection 1 named (that would reset it).
        using var reused = await RawSockets.ConnectAsync(cluster.Address);
        await reused.SendAsync(Http2PrefaceAndSettings, SocketFlags.None);
        var read = await reused.ReceiveAsync(new byte[64], SocketFlags.None);

        Assert.True(read > 0, "the pod's SETTINGS frame arrived");
        Assert.Equal(1, other.ConnectionsAccepted);
    }

    [SkippableFact]
    public async Task Address_IptablesPodClosesANewConnection_ClientSeesTheCloseAtOnce()
    {
        SkipIfUnsupported();
        var options = Options(1);
        // Kestrel's connection limit: a second connection is closed at once, before any middleware sees it.
        options.ConfigureServices = services => services.Configure<KestrelServerOptions>(o => o.Limits.MaxConcurrentConnections = 1);
        await using var cluster = await SimulatedCluster.StartAsync(options);
        // Longer than the poll's deadline: waiting for the pod to say it accepted the connection would fail the test.
        cluster.AttributionTimeout = TimeSpan.FromMinutes(10);
        using var first = await RawSockets.ConnectAsync(cluster.Address);
        await Poll.UntilAsync(() => cluster.Pods[0].OpenConnections == 1, "the pod accepted the first connection");

        using var refused = await RawSockets.ConnectAsync(cluster.Address);
        var closed = Task.Run(async () =>
        {
            try
            {
                return await refused.ReceiveAsync(new byte[16], SocketFlags.None) == 0;
            }
            catch (SocketException)
            {
                return true;
            }
        });

        // As with kube-proxy (and the userspace mode), the client sees the pod's close, not a connection that hangs.
        Assert.True(await Poll.WithTimeout(closed, "the client to see the refused connection close"));
    }

    // The HTTP/2 client connection preface and an empty SETTINGS frame: a pod answers with its own SETTINGS.
    private static readonly byte[] Http2PrefaceAndSettings = [.. "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8, 0, 0, 0, 4, 0, 0, 0, 0, 0];

    [Fact]
    public void IsIptablesSupported_Always_GivesReasonExactlyWhenUnsupported()
    {
        var supported = KubeProxySupport.IsIptablesSupported(out var reason);

        Assert.Equal(supported, reason is null);
        Assert.Equal(supported, KubeProxySupport.IsIptablesSupported(out _));
    }

    private static async Task<string> ListNamespacesAsync() => await RunAsync("ip", "netns", "list");

    /// <summary>Connects inside the cluster's namespace that wait for their handshake (SYN sent, no answer yet).</summary>
    private static async Task<int> SynSentCountAsync(SimulatedCluster cluster) =>
        (await RunAsync("ip", "netns", "exec", cluster.NetworkNamespace!, "ss", "-Htn", "state", "syn-sent"))
            .Split('\n', StringSplitOptions.RemoveEmptyEntries).Length;

    private static async Task<string> RunAsync(string file, params string[] arguments)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            info.ArgumentList.Add(argument);
        }

        using var process = Process.Start(info)!;
        var output = await process.StandardOutput.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.True(process.ExitCode == 0, $"{file} failed: {await process.StandardError.ReadToEndAsync()}");
        return output;
    }
}
