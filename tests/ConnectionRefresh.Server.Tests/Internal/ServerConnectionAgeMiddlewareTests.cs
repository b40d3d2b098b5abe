using System.IO.Pipelines;
using ConnectionRefresh.Server.Internal;
using ConnectionRefresh.Server.Tests.TestSupport;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Server.Tests.Internal;

public sealed class ServerConnectionAgeMiddlewareTests
{
    private static readonly TimeSpan OneMs = TimeSpan.FromMilliseconds(1);

    private static ServerConnectionAgeOptions Options(
        TimeSpan? age = null, double jitter = 0, TimeSpan? grace = null, TimeSpan? idle = null) => new()
        {
            MaxConnectionAge = age ?? Timeout.InfiniteTimeSpan,
            MaxConnectionAgeJitter = jitter,
            MaxConnectionAgeGrace = grace ?? Timeout.InfiniteTimeSpan,
            MaxConnectionIdle = idle ?? Timeout.InfiniteTimeSpan,
        };

    [Fact]
    public void OnConnectionAsync_MaxAgeReached_RequestsCloseAndFiresClosingToken()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10)));
        var connection = harness.Open();
        var closing = connection.Closing!;

        harness.Advance(TimeSpan.FromSeconds(10) - OneMs);
        Assert.Equal(0, connection.CloseRequests);
        Assert.False(closing.ConnectionClosing.IsCancellationRequested);

        harness.Advance(OneMs);
        Assert.Equal(1, connection.CloseRequests);
        Assert.True(closing.ConnectionClosing.IsCancellationRequested);
        var close = Assert.Single(harness.Closes.GetMeasurementSnapshot());
        Assert.Equal("max_age", close.Tags[ServerConnectionAgeMetrics.ReasonTag]);
        Assert.Contains(harness.Logger.Collector.GetSnapshot(), r => r.Id.Id == 1 && r.Level == LogLevel.Debug);

        // Its own RequestClose reaches the tracker's registration on Kestrel's close request too: nothing more happens.
        Assert.DoesNotContain(harness.Logger.Collector.GetSnapshot(), r => r.Id.Id == 8);
    }

    [Fact]
    public void OnConnectionAsync_ConnectionsOpenedTogether_JitterSpreadsClosesOverTheJitterWindow()
    {
        // 200 connections opened at the same instant, age 100 s ± 10 %: each must close inside [90 s, 110 s], and the
        // closes must be spread over that window instead of all landing together. The seed makes it deterministic;
        // with any seed, all 200 uniform draws falling into one half of the window has probability 2 × 0.5^200.
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(100), jitter: 0.1), seed: 42);
        var connections = Enumerable.Range(0, 200).Select(_ => harness.Open()).ToList();
        var closedAt = new Dictionary<FakeConnection, int>();

        for (var second = 1; second <= 120; second++)
        {
            harness.Advance(TimeSpan.FromSeconds(1));
            foreach (var c in connections.Where(c => c.CloseRequests > 0 && !closedAt.ContainsKey(c)))
            {
                closedAt[c] = second;
            }
        }

        Assert.Equal(200, closedAt.Count);
        Assert.All(closedAt.Values, s => Assert.InRange(s, 90, 111));
        Assert.InRange(closedAt.Values.Min(), 90, 95);
        Assert.InRange(closedAt.Values.Max(), 105, 111);
        Assert.True(closedAt.Values.Distinct().Count() >= 15, "closes should land in many different seconds");
        Assert.True(closedAt.Values.GroupBy(s => s).Max(g => g.Count()) <= 40, "no second should close a large share of connections");
    }

    [Fact]
    public void OnConnectionAsync_JitterZero_ClosesAllAtExactlyMaxAge()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(30)));
        var connections = Enumerable.Range(0, 10).Select(_ => harness.Open()).ToList();

        harness.Advance(TimeSpan.FromSeconds(30) - OneMs);
        Assert.All(connections, c => Assert.Equal(0, c.CloseRequests));
        harness.Advance(OneMs);
        Assert.All(connections, c => Assert.Equal(1, c.CloseRequests));
    }

    [Fact]
    public void OnConnectionAsync_GraceEndsWithCallsRunning_AbortsConnectionAtTheGrace()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.FromSeconds(5)), callsCounted: true);
        var connection = harness.Open();
        MiddlewareHarness.Counter(connection).CallStarted();

        harness.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal(1, connection.CloseRequests);
        Assert.Equal(TimeSpan.FromSeconds(5), connection.Closing!.GracePeriod);

        harness.Advance(TimeSpan.FromSeconds(5) - OneMs);
        Assert.Equal(0, connection.Aborts);

        harness.Advance(OneMs);
        Assert.Equal(1, connection.Aborts);
        Assert.NotNull(connection.AbortReason);
        var abort = Assert.Single(harness.Aborts.GetMeasurementSnapshot());
        Assert.Equal("max_age", abort.Tags[ServerConnectionAgeMetrics.ReasonTag]);
        Assert.Contains(harness.Logger.Collector.GetSnapshot(), r => r.Id.Id == 3 && r.Level == LogLevel.Warning && r.Message.Contains("still had 1 running call", StringComparison.Ordinal));

        // Only once, however long the connection takes to go away.
        harness.Advance(TimeSpan.FromMinutes(10));
        Assert.Equal(1, connection.Aborts);
        Assert.Equal(1, connection.CloseRequests);
    }

    [Fact]
    public void OnConnectionAsync_GraceEndsWithoutCallCounting_WarningClaimsNoCallCount()
    {
        // Without services.AddServerConnectionAge(...) no call is counted: the warning must not say "0 running calls"
        // about a connection that is still open because calls run on it.
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.FromSeconds(5)), callsCounted: false);
        var connection = harness.Open();

        harness.Advance(TimeSpan.FromSeconds(10));
        harness.Advance(TimeSpan.FromSeconds(5));

        Assert.Equal(1, connection.Aborts);
        var warning = Assert.Single(harness.Logger.Collector.GetSnapshot(), r => r.Level == LogLevel.Warning);
        Assert.Equal(6, warning.Id.Id);
        Assert.DoesNotContain("0 running call", warning.Message, StringComparison.Ordinal);
        Assert.Contains("not counted", warning.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task OnConnectionAsync_ConnectionEndsWithinGrace_IsNotAbortedAndAgeIsRecorded()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.FromSeconds(5)));
        var connection = harness.Open();

        harness.Advance(TimeSpan.FromSeconds(10));
        harness.Advance(TimeSpan.FromSeconds(2));
        await harness.EndAsync(connection);
        harness.Advance(TimeSpan.FromSeconds(10));

        Assert.Equal(0, connection.Aborts);
        Assert.Empty(harness.Aborts.GetMeasurementSnapshot());
        var age = Assert.Single(harness.Ages.GetMeasurementSnapshot());
        Assert.Equal(12, age.Value, precision: 3);
        Assert.Equal("max_age", age.Tags[ServerConnectionAgeMetrics.ReasonTag]);
    }

    [Fact]
    public void OnConnectionAsync_GraceInfinite_NeverAborts()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10)));
        var connection = harness.Open();
        MiddlewareHarness.Counter(connection).CallStarted();

        harness.Advance(TimeSpan.FromSeconds(10));
        harness.Advance(TimeSpan.FromDays(2));

        Assert.Equal(1, connection.CloseRequests);
        Assert.Equal(0, connection.Aborts);
        Assert.Equal(Timeout.InfiniteTimeSpan, connection.Closing!.GracePeriod);
    }

    [Fact]
    public void OnConnectionAsync_ZeroGrace_AbortsRightAfterTheGracefulClose()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.Zero));
        var connection = harness.Open();

        harness.Advance(TimeSpan.FromSeconds(10));

        Assert.Equal(1, connection.CloseRequests);
        Assert.Equal(1, connection.Aborts);
    }

    [Fact]
    public void OnConnectionAsync_GraceEndsWithNoCallRunning_NoAbortUntilACallStartsAfterIt()
    {
        // Calls are counted and none runs: the grace has nothing to cut, and Kestrel ends the connection by itself after
        // its GOAWAY. A call that still starts on it (one Kestrel admitted just before its GOAWAY) has outlived the grace.
        using var harness = new MiddlewareHarness(Options(idle: TimeSpan.FromSeconds(30), grace: TimeSpan.Zero), callsCounted: true);
        var connection = harness.Open();

        harness.Advance(TimeSpan.FromSeconds(30));
        harness.Advance(ServerConnectionAgeDefaults.MaxGoAwayLinger - OneMs);
        Assert.Equal(1, connection.CloseRequests);
        Assert.Equal(0, connection.Aborts);
        Assert.Empty(harness.Aborts.GetMeasurementSnapshot());
        Assert.DoesNotContain(harness.Logger.Collector.GetSnapshot(), r => r.Level == LogLevel.Warning);

        MiddlewareHarness.Counter(connection).CallStarted();
        Assert.Equal(1, connection.Aborts);
        Assert.Equal("max_idle", Assert.Single(harness.Aborts.GetMeasurementSnapshot()).Tags[ServerConnectionAgeMetrics.ReasonTag]);
        Assert.Contains(harness.Logger.Collector.GetSnapshot(), r => r.Id.Id == 3 && r.Message.Contains("still had 1 running call", StringComparison.Ordinal));

        harness.Advance(TimeSpan.FromMinutes(1));
        Assert.Equal(1, connection.Aborts);
    }

    [Fact]
    public void OnConnectionAsync_GraceEndsWithNoCallRunningButConnectionStaysOpen_AbortedAfterMaxLinger()
    {
        // Kestrel's own close after its GOAWAY takes milliseconds; a connection still open long after the grace with no
        // call counted is stuck (a finished call's response the client does not read): the grace still bounds it.
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.FromSeconds(5)), callsCounted: true);
        var connection = harness.Open();
        var counter = MiddlewareHarness.Counter(connection);
        counter.CallStarted();
        harness.Advance(TimeSpan.FromSeconds(10));
        counter.CallEnded();

        harness.Advance(TimeSpan.FromSeconds(5));
        Assert.Equal(0, connection.Aborts);
        harness.Advance(ServerConnectionAgeDefaults.MaxGoAwayLinger - OneMs);
        Assert.Equal(0, connection.Aborts);

        harness.Advance(OneMs);
        Assert.Equal(1, connection.Aborts);
        Assert.Single(harness.Aborts.GetMeasurementSnapshot());
        harness.Advance(TimeSpan.FromMinutes(1));
        Assert.Equal(1, connection.Aborts);
    }

    [Fact]
    public async Task OnConnectionAsync_ConnectionEndsBeforeMaxAge_NothingHappensLaterAndAgeIsTaggedNone()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.FromSeconds(1), idle: TimeSpan.FromSeconds(3)));
        var connection = harness.Open();
        harness.Advance(TimeSpan.FromSeconds(2));

        await harness.EndAsync(connection);
        harness.Advance(TimeSpan.FromMinutes(1));

        Assert.Equal(0, connection.CloseRequests);
        Assert.False(connection.Closing!.ConnectionClosing.IsCancellationRequested);
        var age = Assert.Single(harness.Ages.GetMeasurementSnapshot());
        Assert.Equal("none", age.Tags[ServerConnectionAgeMetrics.ReasonTag]);
    }

    [Fact]
    public void OnConnectionAsync_NoCallForMaxIdle_ClosesIdleConnection()
    {
        using var harness = new MiddlewareHarness(Options(idle: TimeSpan.FromSeconds(30)));
        var connection = harness.Open();

        harness.Advance(TimeSpan.FromSeconds(30) - OneMs);
        Assert.Equal(0, connection.CloseRequests);
        harness.Advance(OneMs);

        Assert.Equal(1, connection.CloseRequests);
        Assert.True(connection.Closing!.ConnectionClosing.IsCancellationRequested);
        var close = Assert.Single(harness.Closes.GetMeasurementSnapshot());
        Assert.Equal("max_idle", close.Tags[ServerConnectionAgeMetrics.ReasonTag]);
    }

    [Fact]
    public void OnConnectionAsync_CallRunningLongerThanMaxIdle_DoesNotCloseBusyConnection()
    {
        using var harness = new MiddlewareHarness(Options(idle: TimeSpan.FromSeconds(30)));
        var busy = harness.Open();
        var idle = harness.Open();
        MiddlewareHarness.Counter(busy).CallStarted();

        harness.Advance(TimeSpan.FromMinutes(10));

        Assert.Equal(0, busy.CloseRequests);
        Assert.Equal(1, idle.CloseRequests);
    }

    [Fact]
    public void OnConnectionAsync_LastCallEnds_IdleTimeCountsFromThen()
    {
        using var harness = new MiddlewareHarness(Options(idle: TimeSpan.FromSeconds(30)));
        var connection = harness.Open();
        var counter = MiddlewareHarness.Counter(connection);

        counter.CallStarted();
        counter.CallStarted();
        harness.Advance(TimeSpan.FromSeconds(40));
        counter.CallEnded();
        harness.Advance(TimeSpan.FromSeconds(40));
        Assert.Equal(0, connection.CloseRequests);

        counter.CallEnded();
        harness.Advance(TimeSpan.FromSeconds(30) - OneMs);
        Assert.Equal(0, connection.CloseRequests);
        harness.Advance(OneMs);
        Assert.Equal(1, connection.CloseRequests);
    }

    [Fact]
    public void OnConnectionAsync_ShortCallsKeepComing_ConnectionIsNeverIdle()
    {
        using var harness = new MiddlewareHarness(Options(idle: TimeSpan.FromSeconds(30)));
        var connection = harness.Open();
        var counter = MiddlewareHarness.Counter(connection);

        for (var i = 0; i < 100; i++)
        {
            harness.Advance(TimeSpan.FromSeconds(20));
            counter.CallStarted();
            harness.Advance(TimeSpan.FromMilliseconds(5));
            counter.CallEnded();
        }

        Assert.Equal(0, connection.CloseRequests);
    }

    [Fact]
    public void OnConnectionAsync_BusyConnectionWithIdleAndAge_StillClosesAtMaxAge()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromMinutes(2), idle: TimeSpan.FromSeconds(30)));
        var connection = harness.Open();
        MiddlewareHarness.Counter(connection).CallStarted();

        harness.Advance(TimeSpan.FromMinutes(2));

        Assert.Equal(1, connection.CloseRequests);
        Assert.Equal("max_age", Assert.Single(harness.Closes.GetMeasurementSnapshot()).Tags[ServerConnectionAgeMetrics.ReasonTag]);
    }

    [Fact]
    public void OnConnectionAsync_ClosingCallbackThrows_CloseStillRequestedAndErrorLogged()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10)));
        var connection = harness.Open();
        connection.Closing!.ConnectionClosing.Register(() => throw new InvalidOperationException("handler bug"));

        harness.Advance(TimeSpan.FromSeconds(10));

        Assert.Equal(1, connection.CloseRequests);
        Assert.Contains(harness.Logger.Collector.GetSnapshot(), r => r.Id.Id == 5 && r.Level == LogLevel.Error);
    }

    [Fact]
    public async Task OnConnectionAsync_NoLifetimeNotificationFeature_PassesThroughAndWarns()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10)));
        var connection = harness.Open(withLifetimeNotification: false);

        harness.Advance(TimeSpan.FromMinutes(1));
        await harness.EndAsync(connection);

        Assert.Null(connection.Closing);
        Assert.Contains(harness.Logger.Collector.GetSnapshot(), r => r.Id.Id == 4);
    }

    [Fact]
    public async Task OnConnectionAsync_KestrelDoneAfterGracefulClose_SocketLingersUntilClientCloses()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10)));
        var connection = harness.Open();
        harness.Advance(TimeSpan.FromSeconds(10));

        MiddlewareHarness.EndServerSide(connection);
        await AssertLingersUntilClientClosesAsync(harness, connection);
    }

    [Fact]
    public async Task OnConnectionAsync_ClientNeverClosesAfterGracefulClose_SocketClosesAfterMaxLinger()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10)));
        var connection = harness.Open();
        harness.Advance(TimeSpan.FromSeconds(10));

        MiddlewareHarness.EndServerSide(connection);
        // The middleware continues on another thread; once it recorded the connection's end, its linger deadline runs.
        await Poll.UntilAsync(() => harness.Ages.GetMeasurementSnapshot().Count == 1, "the middleware saw Kestrel finish");
        harness.Advance(ServerConnectionAgeDefaults.MaxGoAwayLinger - OneMs);
        Assert.False(harness.Run(connection).IsCompleted);

        harness.Advance(OneMs);
        await Poll.WithTimeout(harness.Run(connection), "the middleware to finish");
        Assert.True(connection.SocketClosed);
    }

    [Theory]
    [InlineData(false)] // Kestrel's keep-alive timeout: no RequestClose
    [InlineData(true)] // the server stops: Kestrel's RequestClose first
    public async Task OnConnectionAsync_KestrelEndedHttp2Connection_SocketLingersUntilClientCloses(bool atShutdown)
    {
        // Kestrel writes a graceful GOAWAY and finishes the idle connection by itself, without an abort: at its
        // keep-alive timeout (neither the tracker nor the lifetime feature sees anything), or when the server stops
        // (RequestClose, not the tracker's). A client that just picked the connection races that GOAWAY.
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromMinutes(5)));
        var connection = harness.Open();

        KestrelEnds(connection, atShutdown);
        await AssertLingersUntilClientClosesAsync(harness, connection);

        // Not a close of this package: none counted, the age is tagged "none".
        Assert.Equal(0, connection.CloseRequests);
        Assert.Empty(harness.Closes.GetMeasurementSnapshot());
        Assert.Equal("none", Assert.Single(harness.Ages.GetMeasurementSnapshot()).Tags[ServerConnectionAgeMetrics.ReasonTag]);
        Assert.DoesNotContain(harness.Logger.Collector.GetSnapshot(), r => r.Id.Id == 7);
    }

    [Theory]
    [InlineData(false)] // Kestrel's keep-alive timeout: no RequestClose
    [InlineData(true)] // the server stops: Kestrel's RequestClose first
    public async Task OnConnectionAsync_ClientNeverClosesAfterKestrelEndedTheConnection_SocketClosesAfterMaxLinger(bool atShutdown)
    {
        // Bounded: at shutdown the linger delays the server's StopAsync (Kestrel waits for connection middleware).
        using var harness = new MiddlewareHarness(Options());
        var connection = harness.Open();

        KestrelEnds(connection, atShutdown);
        await Poll.UntilAsync(() => harness.Ages.GetMeasurementSnapshot().Count == 1, "the middleware saw Kestrel finish");
        harness.Advance(ServerConnectionAgeDefaults.MaxGoAwayLinger - OneMs);
        Assert.False(harness.Run(connection).IsCompleted);

        harness.Advance(OneMs);
        await Poll.WithTimeout(harness.Run(connection), "the middleware to finish");
        Assert.True(connection.SocketClosed);
        Assert.Contains(harness.Logger.Collector.GetSnapshot(), r => r.Id.Id == 7 && r.Level == LogLevel.Debug);
    }

    [Theory]
    [InlineData(0x1, 0)] // PROTOCOL_ERROR, each write whole
    [InlineData(0x6, 0)] // FRAME_SIZE_ERROR
    [InlineData(0x9, 0)] // COMPRESSION_ERROR
    [InlineData(0xb, 0)] // ENHANCE_YOUR_CALM
    [InlineData(0x1, 1)] // written byte by byte: frame headers and the error code split across writes
    [InlineData(0x1, 5)]
    public async Task OnConnectionAsync_KestrelEndedWithAnErrorGoAway_SocketClosesWithoutLinger(int errorCode, int chunk)
    {
        // RFC 9113: after a GOAWAY for an error condition the endpoint MUST close the TCP connection. Kestrel writes
        // that GOAWAY (after a protocol error) and finishes without an abort, as for a graceful close.
        using var harness = new MiddlewareHarness(Options());
        var connection = harness.Open();

        await KestrelWritesAsync(connection, chunk, ServerSettings, DataFrameLookingLikeGoAway(0x1), GoAway(errorCode));
        MiddlewareHarness.EndServerSide(connection);

        await AssertClosesWithoutLingerAsync(harness, connection);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(7)]
    public async Task OnConnectionAsync_KestrelEndedWithANoErrorGoAway_SocketLingersUntilClientCloses(int chunk)
    {
        // A graceful GOAWAY (keep-alive timeout, shutdown, age) keeps the linger, even after a DATA frame whose payload
        // looks like an error GOAWAY: only frame headers count.
        using var harness = new MiddlewareHarness(Options());
        var connection = harness.Open();

        await KestrelWritesAsync(connection, chunk, ServerSettings, DataFrameLookingLikeGoAway(0x1), GoAway(0x0));
        MiddlewareHarness.EndServerSide(connection);

        await AssertLingersUntilClientClosesAsync(harness, connection);
    }

    [Fact]
    public async Task OnConnectionAsync_KestrelCancelsTheTransportReadWhenDone_LingerGoesOnUntilClientCloses()
    {
        // Kestrel's HTTP/2 connection ends by cancelling the transport's pending read. When its reader had already
        // stopped (it was copying data the client sent at that moment, typically a racing request), the cancellation
        // is left over and the linger's first read returns it: that is not the client closing.
        using var harness = new MiddlewareHarness(Options());
        var connection = harness.Open();

        connection.ServerCompletesTransport();
        connection.Transport.Input.CancelPendingRead();
        connection.End.TrySetResult();
        await Poll.UntilAsync(() => harness.Ages.GetMeasurementSnapshot().Count == 1, "the middleware saw Kestrel finish");
        await Task.Yield();
        Assert.False(harness.Run(connection).IsCompleted);
        Assert.False(connection.SocketClosed);

        connection.ClientToServer.Writer.Complete();
        await Poll.WithTimeout(harness.Run(connection), "the middleware to finish");
        Assert.True(connection.SocketClosed);
    }

    [Fact]
    public async Task OnConnectionAsync_ClientClosedItsSideFirst_SocketClosesWithoutWaiting()
    {
        // A client-initiated close: Kestrel reads the client's end and finishes (cancelling its transport read on the
        // way, as it does). There is nothing to wait for: the middleware ends without any time passing.
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromMinutes(5)));
        var connection = harness.Open();

        connection.ClientToServer.Writer.Complete();
        var input = connection.Transport.Input;
        ReadResult read;
        do
        {
            read = await input.ReadAsync();
            input.AdvanceTo(read.Buffer.End);
        }
        while (!read.IsCompleted);
        connection.ServerCompletesTransport();
        input.CancelPendingRead();
        connection.End.TrySetResult();

        await AssertClosesWithoutLingerAsync(harness, connection);
    }

    [Theory]
    [InlineData(false)] // Kestrel's keep-alive timeout or a protocol error: no RequestClose
    [InlineData(true)] // the server stops: Kestrel's RequestClose first
    public async Task OnConnectionAsync_ClientNeverSentAByte_SocketClosesWithoutLinger(bool atShutdown)
    {
        // A pre-connected spare socket: nothing can be in flight, and its client must see it closed at once.
        using var harness = new MiddlewareHarness(Options());
        var connection = harness.Open(clientSpoke: false);

        KestrelEnds(connection, atShutdown);

        await AssertClosesWithoutLingerAsync(harness, connection);
    }

    [Theory]
    [InlineData(false)] // Kestrel's keep-alive timeout or a protocol error: no RequestClose
    [InlineData(true)] // the server stops: Kestrel's RequestClose first
    public async Task OnConnectionAsync_KestrelAborted_SocketClosesWithoutLinger(bool atShutdown)
    {
        // Kestrel aborts an HTTP/2 connection: a request-headers or data-rate timeout, a flow-control error, or the end
        // of the host's shutdown timeout while calls still ran on a connection it had asked to close.
        using var harness = new MiddlewareHarness(Options());
        var connection = harness.Open();

        if (atShutdown)
        {
            connection.ServerRequestsClose();
        }

        connection.Abort(new ConnectionAbortedException(atShutdown ? "shutdown timeout" : "request headers timeout"));
        MiddlewareHarness.EndServerSide(connection);

        await AssertClosesWithoutLingerAsync(harness, connection);
    }

    [Theory]
    [InlineData(false)] // Kestrel's keep-alive timeout or a protocol error: no RequestClose
    [InlineData(true)] // the server stops: Kestrel's RequestClose first
    public async Task OnConnectionAsync_KestrelEndedHttp11Connection_SocketClosesWithoutLinger(bool atShutdown)
    {
        // Without TLS, an endpoint that allows HTTP/1.x speaks HTTP/1.1 (keep-alive timeout, or shutdown): no GOAWAY,
        // nothing to linger for.
        using var harness = new MiddlewareHarness(Options(), protocols: HttpProtocols.Http1AndHttp2);
        var connection = harness.Open();

        KestrelEnds(connection, atShutdown);

        await Poll.WithTimeout(harness.Run(connection), "the middleware to finish");
        Assert.True(connection.SocketClosed);
    }

    [Theory]
    [InlineData("GET /health HTTP/1.1\r\nHost: x\r\n\r\n", false)] // Kestrel answers 400, Connection: close, no GOAWAY
    [InlineData("PROXY TCP4 10.0.0.1 10.0.0.2 40000 8080\r\n", true)] // read by a middleware inside: says nothing
    public async Task OnConnectionAsync_ClientsFirstBytesOnHttp2OnlyEndpoint_LingerOnlyUnlessAnHttp1Request(string firstBytes, bool lingers)
    {
        using var harness = new MiddlewareHarness(Options());
        var connection = harness.Open(clientSpoke: false);
        await connection.ClientToServer.Writer.WriteAsync(System.Text.Encoding.ASCII.GetBytes(firstBytes));
        var input = connection.Transport.Input;
        var read = await input.ReadAsync();
        input.AdvanceTo(read.Buffer.End);

        KestrelEnds(connection, atShutdown: false);

        if (lingers)
        {
            await AssertLingersUntilClientClosesAsync(harness, connection);
        }
        else
        {
            await AssertClosesWithoutLingerAsync(harness, connection);
        }
    }

    [Fact]
    public async Task OnConnectionAsync_AbortedAtGrace_SocketClosesWithoutLinger()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.FromSeconds(1)));
        var connection = harness.Open();
        MiddlewareHarness.Counter(connection).CallStarted();
        harness.Advance(TimeSpan.FromSeconds(10));
        harness.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(1, connection.Aborts);

        MiddlewareHarness.EndServerSide(connection);

        await Poll.WithTimeout(harness.Run(connection), "the middleware to finish");
        Assert.True(connection.SocketClosed);
    }

    [Fact]
    public async Task OnConnectionAsync_AbortedWhileLingering_EndsAtOnceWithoutThrowing()
    {
        // The shutdown timeout ends during the linger (a client that does not close): Kestrel aborts the connection,
        // and the linger must end at once, without an exception out of the middleware.
        using var harness = new MiddlewareHarness(Options());
        var connection = harness.Open();
        connection.ServerRequestsClose();
        MiddlewareHarness.EndServerSide(connection);
        await Poll.UntilAsync(() => harness.Ages.GetMeasurementSnapshot().Count == 1, "the middleware saw Kestrel finish");
        Assert.False(harness.Run(connection).IsCompleted);

        connection.Abort(new ConnectionAbortedException("shutdown timeout"));

        await AssertClosesWithoutLingerAsync(harness, connection);
    }

    [Fact]
    public void OnConnectionAsync_AgeReachedBeforeFirstCall_ClosesWhenTheFirstCallStarts()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10)), callsCounted: true);
        var connection = harness.Open();

        harness.Advance(TimeSpan.FromMinutes(5));
        Assert.Equal(0, connection.CloseRequests);

        MiddlewareHarness.Counter(connection).CallStarted();
        Assert.Equal(1, connection.CloseRequests);
        Assert.True(connection.Closing!.ConnectionClosing.IsCancellationRequested);
        Assert.Equal("max_age", Assert.Single(harness.Closes.GetMeasurementSnapshot()).Tags[ServerConnectionAgeMetrics.ReasonTag]);
    }

    [Fact]
    public void OnConnectionAsync_AgeReachedBeforeFirstCall_FirstCallGetsAgePlusGraceBeforeAnAbort()
    {
        // Closed at its age, the connection would have carried no call, and the first call would have run on a new
        // connection for that one's age and grace: the grace alone would cut it (at once, with a grace of 0).
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.FromSeconds(5)), callsCounted: true);
        var connection = harness.Open();
        harness.Advance(TimeSpan.FromMinutes(5));

        MiddlewareHarness.Counter(connection).CallStarted();
        Assert.Equal(1, connection.CloseRequests);
        Assert.Equal(TimeSpan.FromSeconds(15), connection.Closing!.GracePeriod); // what the handlers are told
        harness.Advance(TimeSpan.FromSeconds(15) - OneMs);
        Assert.Equal(0, connection.Aborts);

        harness.Advance(OneMs);
        Assert.Equal(1, connection.Aborts);
    }

    [Fact]
    public void OnConnectionAsync_AgeReachedBeforeFirstCall_AbortLogNamesAgePlusGraceTheCallsGot()
    {
        // The abort of a close put off to the first call comes after the age plus the grace (15 s): the warning and the
        // abort reason must say so, not name the grace setting (5 s), which the calls outlived threefold.
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.FromSeconds(5)), callsCounted: true);
        var connection = harness.Open();
        harness.Advance(TimeSpan.FromMinutes(5));
        MiddlewareHarness.Counter(connection).CallStarted();

        harness.Advance(TimeSpan.FromSeconds(15));

        Assert.Equal(1, connection.Aborts);
        var warning = Assert.Single(harness.Logger.Collector.GetSnapshot(), r => r.Id.Id == 3);
        Assert.Equal(TimeSpan.FromSeconds(15).ToString(), warning.GetStructuredStateValue("Grace"));
        Assert.Contains("00:00:15", connection.AbortReason!.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void OnConnectionAsync_CallsCountedAndConnectionUsed_ClosesAtMaxAge()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10)), callsCounted: true);
        var connection = harness.Open();
        var counter = MiddlewareHarness.Counter(connection);
        counter.CallStarted();
        counter.CallEnded();

        harness.Advance(TimeSpan.FromSeconds(10));

        Assert.Equal(1, connection.CloseRequests);
        counter.CallStarted();
        Assert.Equal(1, connection.CloseRequests);
    }

    [Fact]
    public void CallStarted_RightAfterTheIdleTimerDecidedToClose_FindsTheCloseAlreadyStarted()
    {
        // The idle timer finds no call and decides to close; a call starts right then, before the close is carried
        // out (the seam runs at that point, on the timer's thread). Deciding and recording the close must be one step:
        // the call then starts on a connection that is already closing, like a call that arrives just before the
        // GOAWAY, and "max_idle" is true of the connection when the close was decided. Otherwise the call starts on a
        // connection that is not closing, and the connection is closed "as idle" while the call runs.
        using var harness = new MiddlewareHarness(Options(idle: TimeSpan.FromSeconds(30)), callsCounted: true);
        var connection = harness.Open();
        var tracker = Assert.IsType<ConnectionAgeTracker>(connection.Closing);
        CloseReason? reasonWhenCallStarted = null;
        tracker.CloseDecided = () =>
        {
            tracker.CloseDecided = null;
            tracker.CallStarted();
            reasonWhenCallStarted = tracker.Reason;
        };

        harness.Advance(TimeSpan.FromSeconds(30));

        Assert.Equal(CloseReason.MaxIdle, reasonWhenCallStarted);
        Assert.Equal(1, connection.CloseRequests);
        Assert.Equal("max_idle", Assert.Single(harness.Closes.GetMeasurementSnapshot()).Tags[ServerConnectionAgeMetrics.ReasonTag]);
    }

    [Fact]
    public async Task OnConnectionAsync_GraceEndsWhileTheConnectionEnds_NoAbortAfterTheEnd()
    {
        // Kestrel finishes a gracefully closed connection (its last call ended) just as the grace ends. Once the
        // middleware has taken the connection as ended, no abort may start: the grace timer fires at the exact point
        // where the middleware creates the linger deadline, after it decided to linger, and must find the connection
        // ended. Otherwise the connection is aborted (and an abort recorded) after Kestrel was done with it.
        // Calls are not counted, so only the end of the connection keeps the grace timer from aborting it (with calls
        // counted, it would also find none running).
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.FromSeconds(5)));
        var connection = harness.Open();
        harness.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal(1, connection.CloseRequests);
        var graceEnded = false;
        harness.BeforeNextTimer(() =>
        {
            harness.Advance(TimeSpan.FromSeconds(5));
            graceEnded = true;
        });

        MiddlewareHarness.EndServerSide(connection);
        await Poll.UntilAsync(() => harness.Ages.GetMeasurementSnapshot().Count == 1, "the middleware saw Kestrel finish");

        Assert.True(graceEnded, "the grace should have ended while the middleware ended the connection");
        Assert.Equal(0, connection.Aborts);
        Assert.Empty(harness.Aborts.GetMeasurementSnapshot());
        Assert.Equal("max_age", Assert.Single(harness.Ages.GetMeasurementSnapshot()).Tags[ServerConnectionAgeMetrics.ReasonTag]);

        // Closed gracefully and not aborted: the socket lingers until the client closes its side.
        Assert.False(harness.Run(connection).IsCompleted);
        connection.ClientToServer.Writer.Complete();
        await Poll.WithTimeout(harness.Run(connection), "the middleware to finish");
        Assert.True(connection.SocketClosed);
    }

    [Fact]
    public void Ended_AfterTheCloseWasDecidedButBeforeItsGraceTimerExists_LingersAndNeverAborts()
    {
        // The grace timer is created outside the lock, after the GOAWAY. A connection that ends between the decision
        // and that moment counts as closed gracefully (it lingers), and its grace timer must never abort it.
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.FromSeconds(5)), callsCounted: true);
        var connection = harness.Open();
        var counter = MiddlewareHarness.Counter(connection);
        counter.CallStarted();
        var tracker = Assert.IsType<ConnectionAgeTracker>(connection.Closing);
        bool? closedGracefully = null;
        tracker.CloseDecided = () =>
        {
            tracker.CloseDecided = null;
            closedGracefully = tracker.Ended();
        };

        harness.Advance(TimeSpan.FromSeconds(10));
        harness.Advance(TimeSpan.FromMinutes(1));

        Assert.True(closedGracefully);
        Assert.Equal(1, connection.CloseRequests);
        Assert.Equal(0, connection.Aborts);
        Assert.Empty(harness.Aborts.GetMeasurementSnapshot());
    }

    [Fact]
    public void CallEnded_AfterTheConnectionClosedByAge_DoesNotRearmTheIdleClose()
    {
        using var harness = new MiddlewareHarness(Options(age: TimeSpan.FromSeconds(60), idle: TimeSpan.FromSeconds(30)), callsCounted: true);
        var connection = harness.Open();
        var counter = MiddlewareHarness.Counter(connection);
        counter.CallStarted();
        harness.Advance(TimeSpan.FromSeconds(60));
        Assert.Equal(1, connection.CloseRequests);

        counter.CallEnded();
        harness.Advance(TimeSpan.FromMinutes(5));

        Assert.Equal(1, connection.CloseRequests);
        Assert.Equal("max_age", Assert.Single(harness.Closes.GetMeasurementSnapshot()).Tags[ServerConnectionAgeMetrics.ReasonTag]);
    }

    // Kestrel finishes the connection by itself; at shutdown after its RequestClose (which the tracker does not start).
    // Kestrel's first frame: an empty SETTINGS.
    private static readonly byte[] ServerSettings = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];

    // A GOAWAY as Kestrel writes it: last stream id 0, the error code, no debug data.
    private static byte[] GoAway(int errorCode) => [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, (byte)errorCode];

    // A DATA frame on stream 1 whose payload is the bytes of an error GOAWAY.
    private static byte[] DataFrameLookingLikeGoAway(int errorCode) => [0, 0, 17, 0x0, 0, 0, 0, 0, 1, .. GoAway(errorCode)];

    // "Kestrel" writes frames to the transport as it does (GetSpan/GetMemory then Advance, or WriteAsync), each frame in
    // one piece (chunk 0) or in pieces of chunk bytes; then flushes.
    private static async Task KestrelWritesAsync(FakeConnection connection, int chunk, params byte[][] frames)
    {
        var output = connection.Transport.Output;
        var bytes = frames.SelectMany(f => f).ToArray();
        var size = chunk == 0 ? bytes.Length : chunk;
        for (var (offset, i) = (0, 0); offset < bytes.Length; offset += size, i++)
        {
            var piece = bytes.AsMemory(offset, Math.Min(size, bytes.Length - offset));
            switch (i % 3)
            {
                case 0:
                    piece.Span.CopyTo(output.GetSpan(piece.Length));
                    output.Advance(piece.Length);
                    break;
                case 1:
                    piece.CopyTo(output.GetMemory(piece.Length));
                    output.Advance(piece.Length);
                    break;
                default:
                    await output.WriteAsync(piece);
                    break;
            }
        }

        await output.FlushAsync();
    }

    [Fact]
    public async Task OnConnectionAsync_KestrelClosesAtShutdown_FiresClosingTokenWithTheShutdownTimeoutAsGrace()
    {
        // The host is stopping, and Kestrel closes the connection (its GOAWAY): the token fires, with the host's
        // shutdown timeout as the grace, and nothing else happens: no close of the package's, no abort, ever.
        using var stopping = new CancellationTokenSource();
        await stopping.CancelAsync();
        using var harness = new MiddlewareHarness(
            Options(grace: TimeSpan.FromSeconds(5)), callsCounted: true, hostStopping: new HostStopping(TimeSpan.FromSeconds(30), stopping.Token));
        var connection = harness.Open();
        MiddlewareHarness.Counter(connection).CallStarted();
        Assert.Equal(TimeSpan.FromSeconds(5), connection.Closing!.GracePeriod);

        connection.ServerRequestsClose();

        await Poll.UntilAsync(() => connection.Closing!.ConnectionClosing.IsCancellationRequested, "the closing token to fire");
        Assert.Equal(TimeSpan.FromSeconds(30), connection.Closing!.GracePeriod);
        harness.Advance(TimeSpan.FromHours(1));
        Assert.Equal(0, connection.CloseRequests);
        Assert.Equal(0, connection.Aborts);
        Assert.Empty(harness.Closes.GetMeasurementSnapshot());
        Assert.Contains(harness.Logger.Collector.GetSnapshot(), r => r.Id.Id == 8 && r.Level == LogLevel.Debug);

        await harness.EndAsync(connection);
        Assert.Equal("shutdown", Assert.Single(harness.Ages.GetMeasurementSnapshot()).Tags[ServerConnectionAgeMetrics.ReasonTag]);
    }

    [Fact]
    public async Task OnConnectionAsync_ApplicationCodeRequestsClose_FiresClosingTokenWithInfiniteGraceAndTagNone()
    {
        // HttpContext.Connection.RequestClose() while the host runs: Kestrel's GOAWAY, and it never cuts the calls.
        using var stopping = new CancellationTokenSource();
        using var harness = new MiddlewareHarness(
            Options(grace: TimeSpan.FromSeconds(5)), hostStopping: new HostStopping(TimeSpan.FromSeconds(30), stopping.Token));
        var connection = harness.Open();

        connection.ServerRequestsClose();

        await Poll.UntilAsync(() => connection.Closing!.ConnectionClosing.IsCancellationRequested, "the closing token to fire");
        Assert.Equal(Timeout.InfiniteTimeSpan, connection.Closing!.GracePeriod);
        Assert.Empty(harness.Closes.GetMeasurementSnapshot());
        await harness.EndAsync(connection);
        Assert.Equal("none", Assert.Single(harness.Ages.GetMeasurementSnapshot()).Tags[ServerConnectionAgeMetrics.ReasonTag]);
    }

    [Fact]
    public async Task OnConnectionAsync_AgeReachedAfterKestrelsShutdownClose_AgeAndGraceStillApply()
    {
        // The shutdown signal changes nothing of the package's own limits: a connection that reaches its age while the
        // server stops is still closed by age and cut at the end of its grace, as before.
        using var stopping = new CancellationTokenSource();
        await stopping.CancelAsync();
        using var harness = new MiddlewareHarness(
            Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.FromSeconds(5)),
            callsCounted: true,
            hostStopping: new HostStopping(TimeSpan.FromSeconds(30), stopping.Token));
        var connection = harness.Open();
        MiddlewareHarness.Counter(connection).CallStarted();
        connection.ServerRequestsClose();
        await Poll.UntilAsync(() => connection.Closing!.ConnectionClosing.IsCancellationRequested, "the closing token to fire");

        harness.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal(1, connection.CloseRequests);
        Assert.Equal("max_age", Assert.Single(harness.Closes.GetMeasurementSnapshot()).Tags[ServerConnectionAgeMetrics.ReasonTag]);
        harness.Advance(TimeSpan.FromSeconds(5));
        Assert.Equal(1, connection.Aborts);

        MiddlewareHarness.EndServerSide(connection);
        await Poll.WithTimeout(harness.Run(connection), "the middleware to finish");
        Assert.Equal("max_age", Assert.Single(harness.Ages.GetMeasurementSnapshot()).Tags[ServerConnectionAgeMetrics.ReasonTag]);
    }

    [Theory]
    [InlineData(true, 10, 5, 15)] // at shutdown; the age's grace ends 15 s after the token fired, before the shutdown timeout (30 s)
    [InlineData(true, 20, 15, 30)] // at shutdown; the grace would end at 35 s: Kestrel's abort at 30 s comes first
    [InlineData(false, 10, 5, 15)] // the application's RequestClose (Kestrel never cuts): the age's grace is the only end
    public async Task OnConnectionAsync_AgeCloseAfterKestrelStartedClosing_GracePeriodIsTheEarlierEnd(
        bool atShutdown, int ageSeconds, int graceSeconds, int expectedSeconds)
    {
        // The token fired when Kestrel started closing, with the shutdown timeout (or infinite) as the grace; the
        // package's own close by age, later, cuts the calls at the end of its grace if that comes first. GracePeriod,
        // counted from when the token fired, must say when the calls really end.
        using var stopping = new CancellationTokenSource();
        if (atShutdown)
        {
            await stopping.CancelAsync();
        }

        using var harness = new MiddlewareHarness(
            Options(age: TimeSpan.FromSeconds(ageSeconds), grace: TimeSpan.FromSeconds(graceSeconds)),
            callsCounted: true,
            hostStopping: new HostStopping(TimeSpan.FromSeconds(30), stopping.Token));
        var connection = harness.Open();
        MiddlewareHarness.Counter(connection).CallStarted();
        connection.ServerRequestsClose();
        await Poll.UntilAsync(() => connection.Closing!.ConnectionClosing.IsCancellationRequested, "the closing token to fire");

        harness.Advance(TimeSpan.FromSeconds(ageSeconds));

        Assert.Equal(1, connection.CloseRequests);
        Assert.Equal(TimeSpan.FromSeconds(expectedSeconds), connection.Closing!.GracePeriod);
    }

    [Fact]
    public async Task OnConnectionAsync_FirstCallOnAnAgedConnectionAfterKestrelsShutdownClose_GracePeriodCountsFromTheToken()
    {
        // A spare connection: the shutdown's close fires the token at 0 s (30 s of shutdown timeout), its age passes at
        // 10 s (put off: no call yet), and a call still in flight starts at 12 s; the close then gives it the age plus
        // the grace (15 s), so it is cut at 27 s, 27 s after the token fired: not 15 s, which reads as 15 s after the token.
        using var stopping = new CancellationTokenSource();
        await stopping.CancelAsync();
        using var harness = new MiddlewareHarness(
            Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.FromSeconds(5)),
            callsCounted: true,
            hostStopping: new HostStopping(TimeSpan.FromSeconds(30), stopping.Token));
        var connection = harness.Open();
        connection.ServerRequestsClose();
        await Poll.UntilAsync(() => connection.Closing!.ConnectionClosing.IsCancellationRequested, "the closing token to fire");
        harness.Advance(TimeSpan.FromSeconds(12));

        MiddlewareHarness.Counter(connection).CallStarted();

        Assert.Equal(1, connection.CloseRequests);
        Assert.Equal(TimeSpan.FromSeconds(27), connection.Closing!.GracePeriod);
        harness.Advance(TimeSpan.FromSeconds(15) - OneMs);
        Assert.Equal(0, connection.Aborts);
        harness.Advance(OneMs);
        Assert.Equal(1, connection.Aborts);
    }

    [Theory]
    [InlineData(5, 15)] // the shutdown (at 20 s, 5 s timeout) ends at 25 s, 15 s after the token: before the grace (40 s)
    [InlineData(60, 30)] // the shutdown would end at 80 s: the grace's end (40 s) comes first and stays
    public async Task OnConnectionAsync_ShutdownAfterAgeClose_GracePeriodIsTheEarlierEnd(int shutdownTimeoutSeconds, int expectedSeconds)
    {
        // The reverse order of the test above: the age closes the connection first (token, 30 s of grace), and the host
        // begins to stop later. Kestrel aborts what still runs when its shutdown timeout ends, and the token cannot fire
        // again (nor does Kestrel's close request at shutdown reach the tracker: its own close used it up), so
        // GracePeriod, read later, must say so by itself.
        using var stopping = new CancellationTokenSource();
        using var harness = new MiddlewareHarness(
            Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.FromSeconds(30)),
            callsCounted: true,
            hostStopping: new HostStopping(TimeSpan.FromSeconds(shutdownTimeoutSeconds), stopping.Token));
        var connection = harness.Open();
        MiddlewareHarness.Counter(connection).CallStarted();
        harness.Advance(TimeSpan.FromSeconds(10));
        Assert.True(connection.Closing!.ConnectionClosing.IsCancellationRequested);
        Assert.Equal(TimeSpan.FromSeconds(30), connection.Closing!.GracePeriod);
        harness.Advance(TimeSpan.FromSeconds(10));

        await stopping.CancelAsync();
        connection.ServerRequestsClose(); // Kestrel's GOAWAY at shutdown: already requested, it changes nothing more

        Assert.Equal(TimeSpan.FromSeconds(expectedSeconds), connection.Closing!.GracePeriod);
        harness.Advance(TimeSpan.FromSeconds(30));
        Assert.Equal(TimeSpan.FromSeconds(expectedSeconds), connection.Closing!.GracePeriod); // a deadline, not a countdown
    }

    [Fact]
    public async Task OnConnectionAsync_ShutdownAfterApplicationRequestedClose_GracePeriodBecomesTheShutdownsEnd()
    {
        // The application's own RequestClose fired the token with no end (Kestrel never cuts those calls); a shutdown
        // 20 s later with a 5 s timeout cuts them 25 s after the token fired.
        using var stopping = new CancellationTokenSource();
        using var harness = new MiddlewareHarness(
            Options(), hostStopping: new HostStopping(TimeSpan.FromSeconds(5), stopping.Token));
        var connection = harness.Open();
        connection.ServerRequestsClose();
        await Poll.UntilAsync(() => connection.Closing!.ConnectionClosing.IsCancellationRequested, "the closing token to fire");
        Assert.Equal(Timeout.InfiniteTimeSpan, connection.Closing!.GracePeriod);
        harness.Advance(TimeSpan.FromSeconds(20));

        await stopping.CancelAsync();

        Assert.Equal(TimeSpan.FromSeconds(25), connection.Closing!.GracePeriod);
    }

    [Fact]
    public async Task OnConnectionAsync_AgeCloseWhileHostStopping_GracePeriodIsTheShutdownsEndIfEarlier()
    {
        // The host began to stop at 0 s (5 s timeout), and the age closes the connection at 2 s, before Kestrel's own
        // close reaches it: its calls are cut at 5 s, 3 s after the token, whatever the package's grace (infinite).
        using var stopping = new CancellationTokenSource();
        using var harness = new MiddlewareHarness(
            Options(age: TimeSpan.FromSeconds(2)),
            callsCounted: true,
            hostStopping: new HostStopping(TimeSpan.FromSeconds(5), stopping.Token));
        var connection = harness.Open();
        MiddlewareHarness.Counter(connection).CallStarted();
        await stopping.CancelAsync();

        harness.Advance(TimeSpan.FromSeconds(2));

        Assert.True(connection.Closing!.ConnectionClosing.IsCancellationRequested);
        Assert.Equal(TimeSpan.FromSeconds(3), connection.Closing!.GracePeriod);
    }

    [Fact]
    public async Task OnConnectionAsync_HostStopsAfterTheConnectionEnded_NothingChanges()
    {
        // The registration on the host's stopping ends with the connection.
        using var stopping = new CancellationTokenSource();
        using var harness = new MiddlewareHarness(
            Options(age: TimeSpan.FromSeconds(10), grace: TimeSpan.FromSeconds(30)),
            callsCounted: true,
            hostStopping: new HostStopping(TimeSpan.FromSeconds(5), stopping.Token));
        var connection = harness.Open();
        MiddlewareHarness.Counter(connection).CallStarted();
        harness.Advance(TimeSpan.FromSeconds(10));
        MiddlewareHarness.Counter(connection).CallEnded();
        await harness.EndAsync(connection);

        await stopping.CancelAsync();

        Assert.Equal(TimeSpan.FromSeconds(30), connection.Closing!.GracePeriod);
    }

    [Fact]
    public async Task OnConnectionAsync_KestrelRequestsCloseAfterTheConnectionEnded_TokenDoesNotFire()
    {
        // The registration on Kestrel's close request ends with the connection.
        using var stopping = new CancellationTokenSource();
        await stopping.CancelAsync();
        using var harness = new MiddlewareHarness(Options(), hostStopping: new HostStopping(TimeSpan.FromSeconds(30), stopping.Token));
        var connection = harness.Open();
        await harness.EndAsync(connection);

        connection.ServerRequestsClose();

        Assert.False(connection.Closing!.ConnectionClosing.IsCancellationRequested);
        Assert.DoesNotContain(harness.Logger.Collector.GetSnapshot(), r => r.Id.Id == 8);
    }

    private static void KestrelEnds(FakeConnection connection, bool atShutdown)
    {
        if (atShutdown)
        {
            connection.ServerRequestsClose();
        }

        MiddlewareHarness.EndServerSide(connection);
    }

    // Kestrel is done, but the client may not have read the GOAWAY yet: the socket stays open and what the client still
    // sends (a racing request) is read and discarded; once the client closes its side, the socket closes at once.
    private static async Task AssertLingersUntilClientClosesAsync(MiddlewareHarness harness, FakeConnection connection)
    {
        await connection.ClientToServer.Writer.WriteAsync(new byte[] { 1, 2, 3 });
        await Task.Yield();
        Assert.False(harness.Run(connection).IsCompleted);
        Assert.False(connection.SocketClosed);

        connection.ClientToServer.Writer.Complete();
        await Poll.WithTimeout(harness.Run(connection), "the middleware to finish");
        Assert.True(connection.SocketClosed);
    }

    // The fake clock does not move here: the middleware finishes only if no linger holds the socket (none began, or it ended).
    private static async Task AssertClosesWithoutLingerAsync(MiddlewareHarness harness, FakeConnection connection)
    {
        await Poll.WithTimeout(harness.Run(connection), "the middleware to finish");
        Assert.True(connection.SocketClosed);
        Assert.DoesNotContain(harness.Logger.Collector.GetSnapshot(), r => r.Id.Id == 7);
    }
}
