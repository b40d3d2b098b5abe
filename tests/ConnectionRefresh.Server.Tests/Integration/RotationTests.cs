using System.Collections.Concurrent;
using System.Net.Sockets;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Server.Internal;
using ConnectionRefresh.Server.Tests.TestSupport;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;

namespace ConnectionRefresh.Server.Tests.Integration;

/// <summary>
/// Rotations and idleness against real Kestrel on loopback, with the connection age on a FakeTimeProvider: each
/// <c>Advance</c> closes connections at a moment the test chooses, while calls run in real time.
/// </summary>
public sealed class RotationTests
{
    private static FakeTimeProvider NewClock() => new(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero));

    [Fact]
    public async Task MaxConnectionAge_ManyRotationsUnderLoad_NoCallFails()
    {
        const int Rotations = 12;
        var clock = NewClock();
        await using var host = await GreeterTestHost.StartAsync(
            o =>
            {
                o.MaxConnectionAge = TimeSpan.FromMinutes(1);
                o.MaxConnectionAgeJitter = 0.1;
            },
            clock);

        // A plain AddGrpcClient client: no client-side refresh, one connection kept for ever unless the server closes it.
        var services = new ServiceCollection();
        services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = host.Address);
        await using var provider = services.BuildServiceProvider();
        var client = provider.GetRequiredService<Greeter.GreeterClient>();

        using var stop = new CancellationTokenSource();
        long succeeded = 0;
        var failures = new ConcurrentQueue<Exception>();
        var workers = Enumerable.Range(0, 4).Select(worker => Task.Run(async () =>
        {
            // Bounded in count as well as by the stop signal.
            for (var i = 0; i < 50_000 && !stop.IsCancellationRequested; i++)
            {
                try
                {
                    if (i % 10 == 0)
                    {
                        using var call = client.StreamHellos(new StreamRequest { Name = "w" + worker, Count = 3 });
                        var replies = 0;
                        while (await call.ResponseStream.MoveNext())
                        {
                            replies++;
                        }

                        Assert.Equal(3, replies);
                    }
                    else
                    {
                        await client.SayHelloAsync(new HelloRequest { Name = "w" + worker });
                    }

                    Interlocked.Increment(ref succeeded);
                }
                catch (Exception ex)
                {
                    failures.Enqueue(ex);
                }
            }
        })).ToArray();

        // The clock moves in steps of half the age, each after 40 more calls. A connection (age 54–66 s with the
        // jitter) therefore closes two or three steps after it opened, never at the first step: a real connection is
        // never closed within moments of opening either (the age is at least 1 s), and closing one in the middle of
        // its HTTP/2 handshake is something a jump of the fake clock could do but real time cannot.
        for (var step = 0; step < 3 * Rotations && host.CloseCount < Rotations; step++)
        {
            var before = Interlocked.Read(ref succeeded);
            await Poll.UntilAsync(() => Interlocked.Read(ref succeeded) >= before + 40 || !failures.IsEmpty, "calls ran on the current connection");
            clock.Advance(TimeSpan.FromSeconds(30));
        }

        stop.Cancel();
        await Poll.WithTimeout(Task.WhenAll(workers), "the workers to stop");

        Assert.True(failures.IsEmpty, $"{failures.Count} call(s) failed, first: {failures.FirstOrDefault()}");
        Assert.True(host.CloseCount >= Rotations, $"expected ≥ {Rotations} graceful closes, saw {host.CloseCount}");
        Assert.True(host.ConnectionsAccepted >= Rotations + 1, $"expected ≥ {Rotations + 1} connections, saw {host.ConnectionsAccepted}");
        Assert.Equal(0, host.AbortCount);
    }

    [Fact]
    public async Task MaxConnectionAge_ClientNeverSentAByte_KestrelSendsAGoAwayInsteadOfItsSettings()
    {
        // Pins Kestrel's behaviour that ConnectionAgeTracker relies on: a connection closed before the client's
        // preface (a pre-connected spare socket) gets a GOAWAY (NO_ERROR, last stream 0) as the server's only frame,
        // before and instead of the SETTINGS that must open the server's side of HTTP/2. A client that starts using
        // the socket at that moment fails its handshake, hence the wait for the first call when calls are counted.
        var clock = NewClock();
        await using var host = await GreeterTestHost.StartAsync(
            o =>
            {
                o.MaxConnectionAge = TimeSpan.FromMinutes(1);
                o.MaxConnectionAgeJitter = 0;
            },
            clock,
            registerServices: false);
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(host.Address.Host, host.Address.Port);

        // Calls are not counted here, so the age closes the connection before any call. The middleware may not have
        // started its timer yet when the clock first moves: move it until the server writes.
        await Poll.UntilAsync(
            () =>
            {
                clock.Advance(TimeSpan.FromMinutes(1));
                return socket.Available > 0;
            },
            "the server to write after the connection's age");

        var received = new List<byte>();
        var buffer = new byte[256];
        using var endOfStream = new CancellationTokenSource(Poll.DefaultTimeout);
        int read;
        while ((read = await socket.ReceiveAsync(buffer, SocketFlags.None, endOfStream.Token)) > 0)
        {
            received.AddRange(buffer.AsSpan(0, read));
        }

        Assert.Equal([0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], received);
        Assert.Equal(1, host.CloseCount);
    }

    [Fact]
    public async Task MaxConnectionIdle_OneIdleOneBusyConnection_ClosesOnlyTheIdleOne()
    {
        var clock = NewClock();
        await using var host = await GreeterTestHost.StartAsync(
            o =>
            {
                o.MaxConnectionAge = Timeout.InfiniteTimeSpan;
                o.MaxConnectionIdle = TimeSpan.FromSeconds(30);
            },
            clock);

        // Two channels with their own handlers: two connections.
        using var idleChannel = GrpcChannel.ForAddress(host.Address, new GrpcChannelOptions { HttpHandler = new SocketsHttpHandler() });
        using var busyChannel = GrpcChannel.ForAddress(host.Address, new GrpcChannelOptions { HttpHandler = new SocketsHttpHandler() });
        var idleClient = new Greeter.GreeterClient(idleChannel);
        var busyClient = new Greeter.GreeterClient(busyChannel);
        using var timeout = new CancellationTokenSource(Poll.DefaultTimeout * 2);

        await idleClient.SayHelloAsync(new HelloRequest { Name = "once" });
        using var stream = busyClient.StreamHellos(new StreamRequest { Name = "busy", Count = 1_000_000, DelayMs = 10 }, cancellationToken: timeout.Token);
        Assert.True(await stream.ResponseStream.MoveNext());
        Assert.Equal(2, host.ConnectionsAccepted);

        // The idle connection's last call may still be finishing on the server (its end re-arms the idle clock), so
        // advance by the idle time until the close shows up; bounded, and the busy connection is never idle however
        // far the clock goes.
        for (var i = 0; i < 100 && host.CloseCount == 0; i++)
        {
            clock.Advance(TimeSpan.FromSeconds(30));
            await Poll.UntilAsync(() => host.CloseCount > 0, "an idle close", TimeSpan.FromMilliseconds(200)).ContinueWith(_ => { });
        }

        var close = Assert.Single(host.Closes.GetMeasurementSnapshot());
        Assert.Equal("max_idle", close.Tags[ServerConnectionAgeMetrics.ReasonTag]);
        await Poll.UntilAsync(() => host.EndedCount == 1, "the idle connection ended");

        // The busy stream keeps running, its connection untouched.
        for (var i = 0; i < 3; i++)
        {
            Assert.True(await stream.ResponseStream.MoveNext());
        }

        clock.Advance(TimeSpan.FromMinutes(10));
        Assert.True(await stream.ResponseStream.MoveNext());
        Assert.Equal(1, host.CloseCount);

        // The idle client's next call simply opens a new connection.
        await idleClient.SayHelloAsync(new HelloRequest { Name = "again" });
        Assert.Equal(3, host.ConnectionsAccepted);
    }
}
