using System.Net.Sockets;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing.Tests.TestSupport;
using Grpc.Core;

namespace ConnectionRefresh.Testing.Tests;

public sealed class SimulatedClusterFaultTests
{
    [Fact]
    public async Task BlackHole_ConnectedClient_CallFailsWithDeadlineExceededAndPodSeesNothing()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 1 });
        var pod = cluster.Pods[0];
        using var client = new TestClient(cluster.Address);
        await client.HelloAsync();

        cluster.BlackHole(pod);

        // 1 s deadline: on a healthy connection this call takes milliseconds; only stopped bytes make it time out.
        var error = await Assert.ThrowsAsync<RpcException>(() => client.HelloAsync(deadline: TimeSpan.FromSeconds(1)));
        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);
        Assert.Equal(1, pod.CallsServed);
        Assert.Equal(1, pod.OpenConnections); // Nothing was closed.
        Assert.True(pod.IsReady);
        Assert.Equal(1, cluster.OpenConnections);
    }

    [Fact]
    public async Task BlackHole_NewConnectionToThePod_HangsToo()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 1 });
        cluster.BlackHole(cluster.Pods[0]);
        using var client = new TestClient(cluster.Address);

        var error = await Assert.ThrowsAsync<RpcException>(() => client.HelloAsync(deadline: TimeSpan.FromSeconds(1)));

        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);
        Assert.Equal(0, cluster.Pods[0].CallsServed);
    }

    [Fact]
    public async Task BlackHole_NewConnectionThroughTheClusterIp_HeldSilentWithoutReachingThePodUntilTheClientGivesUp()
    {
        // A SYN DNATed to a pod on a dead node gets no answer. The user-space ClusterIP has completed the client's handshake,
        // so it must do the rest: never connect to the pod, send nothing, and let go only when the client does.
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 1 });
        var pod = cluster.Pods[0];
        cluster.BlackHole(pod);
        var socket = await RawSockets.ConnectAsync(cluster.Address);
        await Poll.UntilAsync(() => cluster.OpenConnections == 1, "the ClusterIP accepted the connection");

        // An HTTP/2 preface: Kestrel would answer it with SETTINGS at once, had the connection reached the pod.
        await socket.SendAsync("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray(), SocketFlags.None);
        using (var wait = new CancellationTokenSource(TimeSpan.FromSeconds(1)))
        {
            // 1 s: a byte, FIN or reset arrives in milliseconds on loopback; nothing within a second means nothing was sent.
            await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await socket.ReceiveAsync(new byte[16], SocketFlags.None, wait.Token));
        }

        Assert.Equal(1, cluster.OpenConnections);
        // After a second of silence: a connection passed on to the pod is counted there within milliseconds.
        Assert.Equal(0, pod.ConnectionsAccepted);
        socket.Dispose();

        // Released once the client gives up (a connection to a black-holed pod that was open before stays until dispose).
        await Poll.UntilAsync(() => cluster.OpenConnections == 0, "the ClusterIP released the connection the client closed");
        Assert.Equal(0, pod.ConnectionsAccepted);
        Assert.Equal(0, pod.CallsServed);
    }

    [Fact]
    public async Task DisposeAsync_ConnectionHeldForABlackHoledPod_CompletesAndClosesIt()
    {
        var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 1 });
        cluster.BlackHole(cluster.Pods[0]);
        using var socket = await RawSockets.ConnectAsync(cluster.Address);
        await Poll.UntilAsync(() => cluster.OpenConnections == 1, "the ClusterIP accepted the connection");

        await Poll.WithTimeout(cluster.DisposeAsync().AsTask(), "the disposal");

        Assert.Equal(0, cluster.OpenConnections);
        // Reset, as every connection on dispose; a graceful close would read 0 bytes: either way it is not left open.
        var closed = await Poll.WithTimeout(Record.ExceptionAsync(async () =>
        {
            if (await socket.ReceiveAsync(new byte[16], SocketFlags.None) != 0)
            {
                throw new InvalidOperationException("bytes arrived");
            }
        }), "the held connection to close");
        Assert.True(closed is null or SocketException { SocketErrorCode: SocketError.ConnectionReset }, closed?.ToString());
    }

    [Fact]
    public async Task BlackHole_RawSocket_BytesStopInBothDirections()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 1 });
        var pod = cluster.Pods[0];
        using var socket = await RawSockets.ConnectAsync(cluster.Address);
        await Poll.UntilAsync(() => pod.OpenConnections == 1, "the pod accepted the connection");

        cluster.BlackHole(pod);
        // An HTTP/2 preface: Kestrel would answer it with SETTINGS (server → client) after reading it (client → server).
        await socket.SendAsync("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray(), SocketFlags.None);
        var buffer = new byte[64];
        using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(1));
        // 1 s: Kestrel answers a preface in milliseconds; nothing arriving within a second means the bytes were stopped.
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await socket.ReceiveAsync(buffer, SocketFlags.None, wait.Token));
        Assert.Equal(1, pod.OpenConnections);
    }

    [Fact]
    public async Task KillPodAsync_OpenConnection_IsResetAndPodLeaves()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 2 });
        using var socket = await RawSockets.ConnectAsync(cluster.Address);
        await Poll.UntilAsync(() => cluster.Pods.Sum(p => p.OpenConnections) == 1, "a pod accepted the connection");
        var victim = cluster.Pods.Single(p => p.OpenConnections == 1);
        // Its server's listening socket, not just its port: once closed, the port may go to a parallel test's listener.
        var listener = LoopbackListener.On(victim.Address.Port);

        await cluster.KillPodAsync(victim);

        var error = await Assert.ThrowsAsync<SocketException>(async () => await socket.ReceiveAsync(new byte[16], SocketFlags.None));
        Assert.Equal(SocketError.ConnectionReset, error.SocketErrorCode);
        Assert.Equal(SimulatedPodState.Killed, victim.State);
        Assert.DoesNotContain(victim, cluster.Pods);
        await listener.UntilClosedAsync($"{victim.Name}'s own");
    }

    [Fact]
    public async Task KillPodAsyncAndStopPodAsync_ReplaceRemovedPods_ANewPodTakesEachPlaceButNotAfterAScaleDown()
    {
        // As a Deployment's ReplicaSet: a deleted or killed pod is replaced, a pod removed by scaling down is not.
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions
        {
            Replicas = 2,
            ReplaceRemovedPods = true,
            TerminationGracePeriod = TimeSpan.Zero,
        });

        await cluster.KillPodAsync(cluster.Pods.Single(p => p.Name == "greeter-1"));
        await Poll.UntilAsync(() => cluster.ReadyPods.Count == 2, "the killed pod's replacement to be ready");
        await cluster.StopPodAsync(cluster.Pods.Single(p => p.Name == "greeter-2"));
        await Poll.UntilAsync(() => cluster.ReadyPods.Count == 2, "the stopped pod's replacement to be ready");
        Assert.Equal(["greeter-3", "greeter-4"], cluster.Pods.Select(p => p.Name));

        // A replacement is created in the same step as the removal: had ScaleAsync's victim been replaced, the new pod
        // would be starting when ScaleAsync returns, and ScaleAsync(2) would then see 2 pods and add none.
        await cluster.ScaleAsync(1);
        await cluster.ScaleAsync(2);
        Assert.Equal(["greeter-3", "greeter-5"], cluster.Pods.Select(p => p.Name));
    }

    [Fact]
    public async Task KillPodAsync_BlackHoledPod_ClientSeesNoResetAndConnectionStaysSilent()
    {
        // A node that lost power: whatever happens to its pods afterwards, no packet (no RST) reaches the clients.
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 1 });
        var pod = cluster.Pods[0];
        using var socket = await RawSockets.ConnectAsync(cluster.Address);
        await Poll.UntilAsync(() => pod.OpenConnections == 1, "the pod accepted the connection");
        cluster.BlackHole(pod);
        var listener = LoopbackListener.On(pod.Address.Port);

        await cluster.KillPodAsync(pod);

        Assert.Equal(SimulatedPodState.Killed, pod.State);
        await listener.UntilClosedAsync($"{pod.Name}'s own");
        using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(1));
        // 1 s: a reset arrives in microseconds on loopback; silence for a second means nothing was sent.
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await socket.ReceiveAsync(new byte[16], SocketFlags.None, wait.Token));
        Assert.Equal(1, cluster.OpenConnections);
    }

    [Fact]
    public async Task BlackHole_ClientClosesItsConnection_PodNeverSeesTheClose()
    {
        // The client gives up on a dead connection (as keepalive makes it do): its FIN goes to the dead node, nowhere.
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 1 });
        var pod = cluster.Pods[0];
        var socket = await RawSockets.ConnectAsync(cluster.Address);
        await Poll.UntilAsync(() => pod.OpenConnections == 1, "the pod accepted the connection");
        cluster.BlackHole(pod);

        socket.Dispose();

        // 1 s: a FIN passed on reaches Kestrel, which closes the connection, in milliseconds on loopback.
        await Assert.ThrowsAsync<TimeoutException>(() => Poll.UntilAsync(() => pod.OpenConnections == 0, "the pod saw the close", TimeSpan.FromSeconds(1)));
        Assert.Equal(1, cluster.OpenConnections);
    }

    [Fact]
    public async Task KillPodAsync_RunningStream_FailsAndNewCallsReachSurvivor()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 2 });
        using var client = new TestClient(cluster.Address);
        using var stream = client.Greeter.StreamHellos(new StreamRequest { Count = 1000, DelayMs = 50 });
        Assert.True(await stream.ResponseStream.MoveNext(CancellationToken.None));
        var victim = cluster.Pods.Single(p => p.Name == stream.ResponseStream.Current.Instance);

        await cluster.KillPodAsync(victim);

        var error = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            while (await stream.ResponseStream.MoveNext(CancellationToken.None))
            {
            }
        });
        Assert.NotEqual(StatusCode.OK, error.StatusCode);
        var survivor = cluster.Pods.Single();
        using var fresh = new TestClient(cluster.Address);
        Assert.Equal(survivor.Name, await fresh.HelloAsync());
    }

    [Fact]
    public async Task StopPodAsync_RunningCall_FinishesOkAndPodExits()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 2 });
        using var client = new TestClient(cluster.Address);
        var first = await client.HelloAsync();
        var pod = cluster.Pods.Single(p => p.Name == first);
        var other = cluster.Pods.Single(p => p != pod);
        // 2 s server-side delay: long enough that the stop certainly begins while the call runs (we wait until it does).
        var running = client.HelloAsync(delayMs: 2000);
        await Poll.UntilAsync(() => pod.CallsActive == 1, "the slow call is running");

        var listener = LoopbackListener.On(pod.Address.Port);

        var stopping = cluster.StopPodAsync(pod);
        await Poll.UntilAsync(() => pod.State == SimulatedPodState.Terminating, "the pod is terminating");
        Assert.False(pod.IsReady);
        using (var fresh = new TestClient(cluster.Address))
        {
            Assert.Equal(other.Name, await fresh.HelloAsync());
        }

        Assert.Equal(pod.Name, await running);
        await stopping;
        Assert.Equal(SimulatedPodState.Terminated, pod.State);
        Assert.DoesNotContain(pod, cluster.Pods);
        Assert.Equal(0, pod.CallsFailed);
        await listener.UntilClosedAsync($"{pod.Name}'s own");
    }

    [Fact]
    public async Task StopPodAsync_GracePeriodShorterThanCall_AbortsTheCall()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions
        {
            Replicas = 1,
            TerminationGracePeriod = TimeSpan.FromMilliseconds(200),
        });
        var pod = cluster.Pods[0];
        using var client = new TestClient(cluster.Address);
        // A 60 s call against a 200 ms grace period: the stop must cut it long before it would end.
        var running = client.HelloAsync(delayMs: 60_000);
        await Poll.UntilAsync(() => pod.CallsActive == 1, "the slow call is running");

        await cluster.StopPodAsync(pod);

        var error = await Assert.ThrowsAsync<RpcException>(() => running);
        Assert.NotEqual(StatusCode.OK, error.StatusCode);
        Assert.Equal(SimulatedPodState.Terminated, pod.State);
    }
}
