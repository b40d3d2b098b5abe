using System.Diagnostics;
using System.Net.Sockets;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Server.Internal;
using ConnectionRefresh.Server.Tests.TestSupport;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace ConnectionRefresh.Server.Tests.Integration;

/// <summary>
/// The host stops (a pod exits: SIGTERM, <c>IHost.StopAsync</c>) while clients hold HTTP/2 connections: Kestrel closes
/// each one gracefully (GOAWAY) and waits for its connection middleware. Real Kestrel on loopback, real clocks.
/// </summary>
public sealed class ShutdownTests
{
    [Fact]
    public async Task StopAsync_GrpcClientHoldsIdleConnection_SocketStaysOpenUntilTheClientClosedItsSide()
    {
        var probe = new ConnectionEndProbe();
        var kestrelDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var host = await probe.StartHostAsync(kestrelDone);
        using var gated = new GatedGrpcClient(host.Address);
        var client = gated.Client;

        // The client reads nothing until Kestrel has sent its GOAWAY and finished with the connection, and its end
        // reaches the server only once the connection age has decided on the hold: on loopback the client is otherwise
        // often quick enough to close first, which hides what happens over a real network.
        var (connection, clientStream) = await gated.CallThenHoldAsync(probe);
        var stopping = host.StopAsync();
        var released = await clientStream.ReleaseOnceKestrelIsDoneAsync(kestrelDone.Task, host);
        await Poll.WithTimeout(stopping, "the host to stop");
        var stopTook = Stopwatch.GetElapsedTime(released);

        // The client read the GOAWAY and closed its side while the server still held the socket open; without the
        // linger, the socket closes as soon as Kestrel is done and the server never reads the client's end.
        var result = await Poll.WithTimeout(connection, "the connection middleware to return");
        Assert.True(result.ClientEndReadBeforeReturn, "the server should keep the socket open until the client closed its side");

        // The client closes at once, so the linger ends far sooner than its bound.
        Assert.True(stopTook < ServerConnectionAgeDefaults.MaxGoAwayLinger, $"StopAsync took {stopTook} after the client could read");
        Assert.Equal(0, host.CloseCount);
    }

    [Fact]
    public async Task StopAsync_ClientNeverClosesAfterTheGoAway_SocketClosesAtTheLingerBound()
    {
        var probe = new ConnectionEndProbe();
        await using var host = await probe.StartHostAsync();
        using var client = await RawHttp2Client.ConnectAsync(host.Address);
        var connection = Assert.Single(probe.Connections);

        var stopwatch = Stopwatch.StartNew();
        await Poll.WithTimeout(host.StopAsync(), "the host to stop");
        var stopTook = stopwatch.Elapsed;

        // Kestrel waits for the connection middleware: a client that never closes delays StopAsync by the bound, no more.
        var lowerBound = ServerConnectionAgeDefaults.MaxGoAwayLinger - TimeSpan.FromMilliseconds(500);
        Assert.True(stopTook >= lowerBound && stopTook < Poll.DefaultTimeout, $"StopAsync took {stopTook}");
        Assert.False((await connection).ClientEndReadBeforeReturn);
        Assert.Contains(RawHttp2Client.GoAwayFrame, await client.ReadFrameTypesToEndAsync());
    }

    [Fact]
    public async Task StopAsync_ShutdownTimeoutEndsDuringTheLinger_ConnectionAbortedWithoutErrorOrWait()
    {
        var probe = new ConnectionEndProbe();
        await using var host = await probe.StartHostAsync();
        using var client = await RawHttp2Client.ConnectAsync(host.Address);
        var connection = Assert.Single(probe.Connections);

        // The host's shutdown timeout ends while the connection lingers: Kestrel aborts it, and the linger ends then.
        var stopwatch = Stopwatch.StartNew();
        using var shutdownTimeout = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        await Poll.WithTimeout(host.StopAsync(shutdownTimeout.Token), "the host to stop");

        var result = await Poll.WithTimeout(connection, "the connection middleware to return");
        var returnedAfter = stopwatch.Elapsed - TimeProvider.System.GetElapsedTime(result.ReturnedAt);
        Assert.True(
            returnedAfter < ServerConnectionAgeDefaults.MaxGoAwayLinger - TimeSpan.FromSeconds(1),
            $"the connection middleware returned {returnedAfter} after the shutdown began");
        Assert.False(result.ClientEndReadBeforeReturn);
        await client.ReadFrameTypesToEndAsync();
    }

    [Fact]
    public async Task StopAsync_SpareSocketThatNeverSentAByte_ClosesWithoutTheLinger()
    {
        // A pre-connected spare socket (grpc-dotnet's balancer keeps one) never sent a byte: no request can be in flight
        // on it, and its client must see it closed at once; held open with the GOAWAY buffered, the client would hand
        // it over and fail the call that takes it.
        var probe = new ConnectionEndProbe();
        await using var host = await probe.StartHostAsync();
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(host.Address.Host, host.Address.Port);
        await Poll.UntilAsync(() => probe.Connections.Count == 1, "the server to accept the connection");

        var stopwatch = Stopwatch.StartNew();
        await Poll.WithTimeout(host.StopAsync(), "the host to stop");
        var stopTook = stopwatch.Elapsed;

        // With a linger, the host would wait the full bound for this client, which never closes its side.
        Assert.True(stopTook < ServerConnectionAgeDefaults.MaxGoAwayLinger - TimeSpan.FromSeconds(1), $"StopAsync took {stopTook}");
        Assert.False((await Poll.WithTimeout(Assert.Single(probe.Connections), "the connection middleware to return")).ClientEndReadBeforeReturn);
        using var endOfStream = new CancellationTokenSource(Poll.DefaultTimeout);
        var buffer = new byte[1024];
        while (await socket.ReceiveAsync(buffer, SocketFlags.None, endOfStream.Token) > 0)
        {
            // Kestrel's GOAWAY; then the end of the stream.
        }
    }

    [Fact]
    public async Task StopAsync_SpareSocketThatNeverSentAByte_IsClosedWhenTheApplicationStartsStopping()
    {
        // grpc-dotnet takes its spare socket right after the GOAWAY of its current connection, that is when that pod
        // exits; if the spare is on the same pod, its end must be on its way before Kestrel's shutdown sends any GOAWAY,
        // or a check of the spare can find it open and hand it over. The host raises ApplicationStopping before it stops
        // Kestrel; this callback is registered before the package's (at bind), so it runs after it.
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        var atStopping = new TaskCompletionSource<(bool Readable, int Available)>(TaskCreationOptions.RunContinuationsAsynchronously);
        var insideConnectionAge = 0;
        await using var host = await GreeterTestHost.StartAsync(
            _ => { },
            kestrelDefaults: kestrel =>
                kestrel.ApplicationServices.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping.Register(() =>
                {
                    var readable = socket.Poll(TimeSpan.FromSeconds(5), SelectMode.SelectRead);
                    atStopping.TrySetResult((readable, readable ? socket.Available : -1));
                }),
            useConnectionAge: listen =>
            {
                listen.UseServerConnectionAge();
                listen.Use(next => connection =>
                {
                    Interlocked.Increment(ref insideConnectionAge);
                    return next(connection);
                });
            });
        await socket.ConnectAsync(host.Address.Host, host.Address.Port);

        // Inside the package's middleware: the connection is known to it (one accepted while the application is
        // already stopping is not, and keeps the close after Kestrel's GOAWAY).
        await Poll.UntilAsync(() => Volatile.Read(ref insideConnectionAge) == 1, "the connection to reach Kestrel");

        await Poll.WithTimeout(host.StopAsync(), "the host to stop");

        // Readable with nothing to read: the end of the stream, and no GOAWAY before it.
        Assert.Equal((true, 0), await atStopping.Task);
        Assert.Equal(0, await socket.ReceiveAsync(new byte[64], SocketFlags.None));
    }

    [Fact]
    public async Task StopAsync_StreamEndsOnTheClosingToken_EndsWithStatusOkLongBeforeTheShutdownTimeout()
    {
        // A pod exits while a long server stream runs. Kestrel sends its GOAWAY and would wait for the stream until the
        // host's shutdown timeout, then abort it (an error for the client). The method follows src/ConnectionRefresh.Server/README.md (it ends its
        // stream when GetConnectionClosingToken() fires), so it must be told at the shutdown, and end cleanly, at once.
        var shutdownTimeout = TimeSpan.FromSeconds(60);
        await using var host = await StartWithShutdownTimeoutAsync(shutdownTimeout);
        using var channel = GrpcChannel.ForAddress(host.Address);
        var client = new Greeter.GreeterClient(channel);
        using var callTimeout = new CancellationTokenSource(shutdownTimeout - TimeSpan.FromSeconds(10));
        using var call = client.StreamHellos(
            new StreamRequest { Name = TestGreeterService.UntilClosing, Count = 1_000_000, DelayMs = 10 },
            cancellationToken: callTimeout.Token);
        Assert.True(await call.ResponseStream.MoveNext(), "the stream runs");

        var stopwatch = Stopwatch.StartNew();
        var stopping = host.StopAsync();
        var received = 1;
        while (await call.ResponseStream.MoveNext())
        {
            received++;
        }

        var streamEndedAfter = stopwatch.Elapsed;
        Assert.Equal(StatusCode.OK, call.GetStatus().StatusCode);
        Assert.True(received < 1_000_000);
        await Poll.WithTimeout(stopping, "the host to stop");
        var stopTook = stopwatch.Elapsed;

        await AssertEndedOnTheClosingTokenAsync(host, shutdownTimeout, streamEndedAfter, stopTook);
    }

    [Fact]
    public async Task StopAsync_BidiStreamEndsOnTheClosingToken_EndsWithStatusOkLongBeforeTheShutdownTimeout()
    {
        // The same for a bidirectional stream (the Chat in src/ConnectionRefresh.Server/README.md): the client has sent a request, got its reply and keeps
        // its request stream open; the method waits for the next request with a token linked to the closing token. At
        // the shutdown's GOAWAY that read must be cancelled, and the call end with OK, not be cut at the shutdown timeout.
        var shutdownTimeout = TimeSpan.FromSeconds(60);
        await using var host = await StartWithShutdownTimeoutAsync(shutdownTimeout);
        using var channel = GrpcChannel.ForAddress(host.Address);
        var client = new Greeter.GreeterClient(channel);
        using var callTimeout = new CancellationTokenSource(shutdownTimeout - TimeSpan.FromSeconds(10));
        using var call = client.Chat(cancellationToken: callTimeout.Token);
        await call.RequestStream.WriteAsync(new HelloRequest { Name = TestGreeterService.UntilClosing });
        Assert.True(await call.ResponseStream.MoveNext(), "the chat answers");
        Assert.Equal(0, call.ResponseStream.Current.Sequence);

        var stopwatch = Stopwatch.StartNew();
        var stopping = host.StopAsync();
        Assert.False(await call.ResponseStream.MoveNext(), "the chat ends without another reply");
        var streamEndedAfter = stopwatch.Elapsed;
        Assert.Equal(StatusCode.OK, call.GetStatus().StatusCode);
        await Poll.WithTimeout(stopping, "the host to stop");
        var stopTook = stopwatch.Elapsed;

        await AssertEndedOnTheClosingTokenAsync(host, shutdownTimeout, streamEndedAfter, stopTook);
    }

    private static Task<GreeterTestHost> StartWithShutdownTimeoutAsync(TimeSpan shutdownTimeout) => GreeterTestHost.StartAsync(
        _ => { },
        services: services => services.Configure<HostOptions>(o => o.ShutdownTimeout = shutdownTimeout));

    /// <summary>A stream that follows src/ConnectionRefresh.Server/README.md ended at the shutdown's GOAWAY, told by the closing token.</summary>
    private static async Task AssertEndedOnTheClosingTokenAsync(GreeterTestHost host, TimeSpan shutdownTimeout, TimeSpan streamEndedAfter, TimeSpan stopTook)
    {
        // Without the token the stream would end only at the shutdown timeout's abort (60 s); loaded machines get 15 s.
        Assert.True(streamEndedAfter < TimeSpan.FromSeconds(15), $"the stream ended {streamEndedAfter} after StopAsync began");
        Assert.True(stopTook < TimeSpan.FromSeconds(15), $"StopAsync took {stopTook}");

        // The feature tells how long the stream had: the host's shutdown timeout. Kestrel closed the connection, not the
        // package: no close counted, no abort, and its age is tagged shutdown.
        await Poll.WithTimeout(host.Probe.ClosingObserved.Task, "the handler to see the closing token");
        Assert.Equal(shutdownTimeout, host.Probe.GracePeriodAtClosing);
        Assert.Equal(0, host.CloseCount);
        Assert.Equal(0, host.AbortCount);
        Assert.Equal("shutdown", Assert.Single(host.Ages.GetMeasurementSnapshot()).Tags[ServerConnectionAgeMetrics.ReasonTag]);
    }

    [Fact]
    public async Task OnConnectionAsync_ConnectionEndsNormallyWhileTheHostRuns_HostKeepsNoReferenceToIt()
    {
        // The shutdown signal must not cost a registration (on ApplicationStopping, or in the endpoint's table of
        // connections) that outlives the connection: a server that runs for weeks sees millions of connections. Anything
        // the host still held would keep the connection's tracker (its IConnectionClosingFeature) reachable.
        WeakReference? tracker = null;
        await using var host = await GreeterTestHost.StartAsync(
            _ => { },
            useConnectionAge: listen =>
            {
                listen.UseServerConnectionAge();
                listen.Use(next => connection =>
                {
                    tracker = new WeakReference(connection.Features.Get<IConnectionClosingFeature>());
                    return next(connection);
                });
            });

        await CallOnceAndCloseAsync(host.Address);
        await Poll.UntilAsync(() => host.EndedCount == 1, "the connection to end");

        Assert.NotNull(tracker);
        await Poll.UntilAsync(
            () =>
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
                GC.Collect();
                return !tracker.IsAlive;
            },
            "the ended connection's tracker to be collected");
    }

    // Its own method, so that no local of the test keeps the channel (and through it nothing of the server) alive.
    private static async Task CallOnceAndCloseAsync(Uri address)
    {
        using var channel = GrpcChannel.ForAddress(address);
        var reply = await new Greeter.GreeterClient(channel).SayHelloAsync(new HelloRequest { Name = "once" });
        Assert.Equal("Hello once", reply.Message);
    }
}
