using ConnectionRefresh.Protos;
using ConnectionRefresh.Server.Tests.TestSupport;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Time.Testing;

namespace ConnectionRefresh.Server.Tests.Integration;

/// <summary>
/// Real Kestrel on loopback; the connection age runs on a FakeTimeProvider, so the GOAWAY and the grace abort happen
/// exactly when a test advances the clock, while sockets and the handlers' own delays run in real time.
/// </summary>
public sealed class GracefulCloseTests
{
    private static readonly TimeSpan Age = TimeSpan.FromMinutes(1);
    private static readonly TimeSpan Grace = TimeSpan.FromSeconds(30);

    private static FakeTimeProvider NewClock() => new(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero));

    private static void Configure(ServerConnectionAgeOptions o)
    {
        o.MaxConnectionAge = Age;
        o.MaxConnectionAgeJitter = 0;
        o.MaxConnectionAgeGrace = Grace;
    }

    [Fact]
    public async Task MaxConnectionAge_Reached_ConnectionClosesGracefullyAndNextCallUsesNewConnection()
    {
        var clock = NewClock();
        await using var host = await GreeterTestHost.StartAsync(Configure, clock);
        using var channel = GrpcChannel.ForAddress(host.Address);
        var client = new Greeter.GreeterClient(channel);

        await client.SayHelloAsync(new HelloRequest { Name = "a" });
        Assert.Equal(1, host.ConnectionsAccepted);

        clock.Advance(Age);
        await Poll.UntilAsync(() => host.EndedCount == 1, "the idle connection closed after its GOAWAY");

        var reply = await client.SayHelloAsync(new HelloRequest { Name = "b" });
        Assert.Equal("pod-0", reply.Instance);
        Assert.Equal(2, host.ConnectionsAccepted);
        Assert.Equal(1, host.CloseCount);
        Assert.Equal(0, host.AbortCount);
    }

    [Fact]
    public async Task StreamHellos_ShorterThanGrace_CompletesAfterTheGracefulClose()
    {
        var clock = NewClock();
        await using var host = await GreeterTestHost.StartAsync(Configure, clock);
        using var channel = GrpcChannel.ForAddress(host.Address);
        var client = new Greeter.GreeterClient(channel);
        using var call = client.StreamHellos(new StreamRequest { Name = "short", Count = 20, DelayMs = 20 });

        Assert.True(await call.ResponseStream.MoveNext());
        clock.Advance(Age);
        var sequenceAtClose = await Poll.WithTimeout(host.Probe.ClosingObserved.Task, "the closing token");

        var received = 1;
        while (await call.ResponseStream.MoveNext())
        {
            received++;
        }

        Assert.Equal(20, received);
        Assert.True(sequenceAtClose < 20, "the graceful close started while the stream was running");
        Assert.Equal(StatusCode.OK, call.GetStatus().StatusCode);
        await Poll.UntilAsync(() => host.EndedCount == 1, "the connection ended once its last stream finished");

        // The grace passing after the connection ended cuts nothing.
        clock.Advance(Grace);
        Assert.Equal(0, host.AbortCount);
        Assert.False(host.Probe.FeatureMissing);
    }

    [Fact]
    public async Task StreamHellos_LongerThanGrace_IsAbortedAtTheGraceAndTokenFiredAtCloseStart()
    {
        var clock = NewClock();
        await using var host = await GreeterTestHost.StartAsync(Configure, clock);
        using var channel = GrpcChannel.ForAddress(host.Address);
        var client = new Greeter.GreeterClient(channel);
        using var timeout = new CancellationTokenSource(Poll.DefaultTimeout);
        using var call = client.StreamHellos(
            new StreamRequest { Name = "long", Count = 1_000_000, DelayMs = 10 },
            cancellationToken: timeout.Token);

        Assert.True(await call.ResponseStream.MoveNext());
        Assert.False(host.Probe.ClosingObserved.Task.IsCompleted);

        // The graceful close starts: the token fires at once, the stream keeps running.
        clock.Advance(Age);
        Assert.True(host.Probe.ClosingObserved.Task.IsCompleted, "the token fired synchronously with the GOAWAY");
        await ReadAsync(call, 3);

        // One tick before the grace ends, nothing is cut.
        clock.Advance(Grace - TimeSpan.FromMilliseconds(1));
        await ReadAsync(call, 3);
        Assert.Equal(0, host.AbortCount);

        // At the grace, the connection is aborted and the stream fails.
        clock.Advance(TimeSpan.FromMilliseconds(1));
        Assert.Equal(1, host.AbortCount);
        var ex = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            while (await call.ResponseStream.MoveNext())
            {
            }
        });
        Assert.NotEqual(StatusCode.OK, ex.StatusCode);
        Assert.NotEqual(StatusCode.Cancelled, ex.StatusCode);
        await Poll.UntilAsync(() => host.EndedCount == 1, "the aborted connection ended");
    }

    [Fact]
    public async Task StreamHellos_HandlerWatchesClosingToken_EndsCleanlyBeforeTheGrace()
    {
        var clock = NewClock();
        await using var host = await GreeterTestHost.StartAsync(Configure, clock);
        using var channel = GrpcChannel.ForAddress(host.Address);
        var client = new Greeter.GreeterClient(channel);
        using var timeout = new CancellationTokenSource(Poll.DefaultTimeout);
        using var call = client.StreamHellos(
            new StreamRequest { Name = TestGreeterService.UntilClosing, Count = 1_000_000, DelayMs = 10 },
            cancellationToken: timeout.Token);

        Assert.True(await call.ResponseStream.MoveNext());
        clock.Advance(Age);

        var received = 1;
        while (await call.ResponseStream.MoveNext())
        {
            received++;
        }

        Assert.Equal(StatusCode.OK, call.GetStatus().StatusCode);
        Assert.True(received < 1_000_000);
        await Poll.UntilAsync(() => host.EndedCount == 1, "the connection ended once the stream ended");
        clock.Advance(Grace);
        Assert.Equal(0, host.AbortCount);
    }

    [Fact]
    public async Task UseServerConnectionAge_ListenOptionsOnlyWithoutServiceRegistration_ClosesByAgeAndExposesClosingToken()
    {
        var clock = NewClock();
        await using var host = await GreeterTestHost.StartAsync(Configure, clock, registerServices: false);
        using var channel = GrpcChannel.ForAddress(host.Address);
        var client = new Greeter.GreeterClient(channel);
        using var call = client.StreamHellos(new StreamRequest { Name = "short", Count = 10, DelayMs = 20 });

        Assert.True(await call.ResponseStream.MoveNext());
        clock.Advance(Age);
        await Poll.WithTimeout(host.Probe.ClosingObserved.Task, "the closing token");
        while (await call.ResponseStream.MoveNext())
        {
        }

        Assert.Equal(StatusCode.OK, call.GetStatus().StatusCode);
        await Poll.UntilAsync(() => host.EndedCount == 1, "the connection ended after its stream");
        await client.SayHelloAsync(new HelloRequest { Name = "next" });
        Assert.Equal(2, host.ConnectionsAccepted);
        Assert.Equal(1, host.CloseCount);
    }

    [Fact]
    public async Task MaxConnectionIdle_ZeroGraceAndNoCallRunning_ClosesGracefullyWithoutAbortAndHoldsTheSocket()
    {
        // A grace of 0 cuts the calls still running when the graceful close starts; an idle connection has none. It
        // must get what every connection closed while no call runs gets: the GOAWAY, and its socket held until the
        // client has closed its side (a client that picked the connection just then retries instead of failing).
        var clock = NewClock();
        var probe = new ConnectionEndProbe();
        var kestrelDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var host = await GreeterTestHost.StartAsync(
            o =>
            {
                o.MaxConnectionAge = Timeout.InfiniteTimeSpan;
                o.MaxConnectionIdle = TimeSpan.FromSeconds(30);
                o.MaxConnectionAgeGrace = TimeSpan.Zero;
            },
            clock,
            useConnectionAge: listen =>
            {
                listen.Use(probe.Middleware);
                listen.UseServerConnectionAge();
                listen.Use(ConnectionEndProbe.SignalsWhenKestrelIsDone(kestrelDone));
            });
        using var client = await RawHttp2Client.ConnectAsync(host.Address);
        var connection = Assert.Single(probe.Connections);

        // The SETTINGS came, so the connection's idle timer runs (it starts before Kestrel's part).
        clock.Advance(TimeSpan.FromSeconds(30));
        Assert.Equal(1, host.CloseCount);
        Assert.Equal(0, host.AbortCount);

        var goAway = await client.ReadUntilAsync(RawHttp2Client.GoAwayFrame);
        Assert.Equal(new byte[4], goAway.Payload[4..8]); // NO_ERROR
        await Poll.WithTimeout(kestrelDone.Task, "Kestrel to finish the connection after its GOAWAY");
        await Poll.UntilAsync(() => host.EndedCount == 1, "the connection age to decide on the hold (it records the age right after)");
        Assert.False(connection.IsCompleted, "the socket should be held until the client closed its side");

        client.Tcp.Client.Shutdown(System.Net.Sockets.SocketShutdown.Send);
        var result = await Poll.WithTimeout(connection, "the connection middleware to return");
        Assert.True(result.ClientEndReadBeforeReturn);
        Assert.Equal(0, host.AbortCount);
    }

    [Fact]
    public async Task MaxConnectionAge_ZeroGraceAndSpareSocketUsedAfterItsAge_FirstCallCompletes()
    {
        // With calls counted, a connection that reached its age before its first call (grpc-dotnet's pre-connected
        // socket) is closed when that call starts, so that Kestrel does not send a GOAWAY in place of its SETTINGS.
        // That call would have run on a new connection had the connection been closed at its age: a grace of 0 (or one
        // shorter than the call) must not cut it. Without call counting the connection is closed at its age, and the
        // call simply opens a new one.
        var clock = NewClock();
        var insideConnectionAge = 0;
        await using var host = await GreeterTestHost.StartAsync(
            o =>
            {
                o.MaxConnectionAge = Age;
                o.MaxConnectionAgeJitter = 0;
                o.MaxConnectionAgeGrace = TimeSpan.Zero;
            },
            clock,
            useConnectionAge: listen =>
            {
                listen.UseServerConnectionAge();
                listen.Use(next => connection =>
                {
                    Interlocked.Increment(ref insideConnectionAge);
                    return next(connection);
                });
            });
        using var channel = GrpcChannel.ForAddress(host.Address);
        var client = new Greeter.GreeterClient(channel);

        // The balancer connects a socket and sends nothing until the first call.
        await channel.ConnectAsync();
        await Poll.UntilAsync(() => Volatile.Read(ref insideConnectionAge) == 1, "the connection to be inside the connection age");
        clock.Advance(Age);
        Assert.Equal(0, host.CloseCount);

        var reply = await client.SayHelloAsync(new HelloRequest { Name = "first", DelayMs = 100 });

        Assert.Equal("pod-0", reply.Instance);
        Assert.Equal(1, host.CloseCount);
        Assert.Equal(0, host.AbortCount);
        await Poll.UntilAsync(() => host.EndedCount == 1, "the connection to end after its first call");
        await client.SayHelloAsync(new HelloRequest { Name = "next" });
        Assert.Equal(2, host.ConnectionsAccepted);
    }

    private static async Task ReadAsync(AsyncServerStreamingCall<HelloReply> call, int count)
    {
        for (var i = 0; i < count; i++)
        {
            Assert.True(await call.ResponseStream.MoveNext(), "the stream still runs");
        }
    }
}
