using System.Diagnostics;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using ConnectionRefresh.Tests.Infrastructure;
using Grpc.Core;

namespace ConnectionRefresh.Tests.Integration;

public sealed class KeepAliveTests
{
    [Fact]
    public async Task StreamOnRetiredConnection_PeerGoesSilent_FailsUnavailableWithinKeepAliveBound()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var host = GreeterClientHost.WithRefresh(cluster.Address, o =>
        {
            o.MaxConnectionAge = TimeSpan.FromSeconds(1);
            o.KeepAlivePingDelay = TimeSpan.FromSeconds(1);
            o.KeepAlivePingTimeout = TimeSpan.FromSeconds(1);
        });

        // A long server stream (100 messages 100 ms apart), then a unary call after the age retires its connection.
        // The 60 s deadline only keeps a broken build from hanging the suite; keepalive must end the stream long before.
        using var stream = host.Client.StreamHellos(new StreamRequest { Name = "s", Count = 100, DelayMs = 100 }, deadline: DateTime.UtcNow.AddSeconds(60));
        Assert.True(await stream.ResponseStream.MoveNext());
        var retiredAt = Stopwatch.StartNew();
        while (retiredAt.Elapsed < TimeSpan.FromSeconds(1.5))
        {
            Assert.True(await stream.ResponseStream.MoveNext());
        }

        await host.Client.SayHelloAsync(new HelloRequest { Name = "after-age" });
        cluster.BlackHole(cluster.Pods[0]);
        var silentSince = Stopwatch.StartNew();

        var failure = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            while (await stream.ResponseStream.MoveNext())
            {
            }
        });

        Assert.Equal(StatusCode.Unavailable, failure.StatusCode);
        // Ping delay 1 s + ping timeout 1 s + SocketsHttpHandler's ~1 s heartbeat; 20 s leaves a loaded 2-core
        // machine ample room while staying far from the 60 s deadline a missing ping would run into.
        Assert.InRange(silentSince.Elapsed, TimeSpan.Zero, TimeSpan.FromSeconds(20));
    }
}
