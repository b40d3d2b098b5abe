using System.Net.Sockets;
using ConnectionRefresh.Internal;
using ConnectionRefresh.Tests.Infrastructure;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;

namespace ConnectionRefresh.Tests.Internal;

public sealed class ConnectionRefreshHandlerTests
{
    private static ConnectionRefreshOptions Options(Action<ConnectionRefreshOptions>? configure = null)
    {
        var options = new ConnectionRefreshOptions { MaxConnectionAge = TimeSpan.FromSeconds(10), MaxConnectionAgeJitter = 0.1 };
        configure?.Invoke(options);
        return options;
    }

    [Fact]
    public async Task SendAsync_BeforeAge_ReusesConnection()
    {
        var stubs = new StubGenerations(Options());
        using var invoker = stubs.CreateInvoker(out _);

        await invoker.SendAndRead();
        stubs.Time.Advance(TimeSpan.FromSeconds(9.9));
        await invoker.SendAndRead();

        Assert.Single(stubs.Created);
        Assert.Equal(2, stubs.Created[0].Calls);
    }

    [Fact]
    public async Task SendAsync_AfterAge_UsesNewConnectionAndDisposesOld()
    {
        var stubs = new StubGenerations(Options());
        using var invoker = stubs.CreateInvoker(out _);

        await invoker.SendAndRead();
        stubs.Time.Advance(TimeSpan.FromSeconds(10));
        await invoker.SendAndRead();

        Assert.Equal(2, stubs.Created.Count);
        Assert.True(stubs.Created[0].IsDisposed);
        Assert.False(stubs.Created[1].IsDisposed);
        Assert.Equal(1, stubs.Created[1].Calls);
    }

    [Theory]
    [InlineData(0.0, 9.0)]  // lowest draw: age × (1 − 0.1)
    [InlineData(1.0, 11.0)] // highest draw: age × (1 + 0.1)
    public async Task SendAsync_JitteredAge_RetiresWithinJitterBounds(double draw, double expectedSeconds)
    {
        var stubs = new StubGenerations(Options(), random: draw);
        using var invoker = stubs.CreateInvoker(out _);

        await invoker.SendAndRead();
        stubs.Time.Advance(TimeSpan.FromSeconds(expectedSeconds - 0.01));
        await invoker.SendAndRead();
        Assert.Single(stubs.Created);

        stubs.Time.Advance(TimeSpan.FromSeconds(0.02));
        await invoker.SendAndRead();
        Assert.Equal(2, stubs.Created.Count);
    }

    [Fact]
    public async Task SendAsync_InfiniteAge_NeverRetires()
    {
        var stubs = new StubGenerations(Options(o => o.MaxConnectionAge = Timeout.InfiniteTimeSpan));
        using var invoker = stubs.CreateInvoker(out _);

        await invoker.SendAndRead();
        stubs.Time.Advance(TimeSpan.FromDays(30));
        await invoker.SendAndRead();

        Assert.Single(stubs.Created);
    }

    [Fact]
    public async Task SendAsync_RequestBudgetReached_RetiresAfterLastCall()
    {
        var stubs = new StubGenerations(Options(o => o.MaxRequestsPerConnection = 3));
        using var invoker = stubs.CreateInvoker(out _);

        for (var i = 0; i < 7; i++)
        {
            await invoker.SendAndRead();
        }

        Assert.Equal([3, 3, 1], stubs.Created.Select(h => h.Calls));
        Assert.True(stubs.Created[0].IsDisposed);
        Assert.True(stubs.Created[1].IsDisposed);
        Assert.False(stubs.Created[2].IsDisposed);
    }

    [Fact]
    public async Task SendAsync_RetiredWhileResponseOpen_DisposesOnlyAfterBodyEnds()
    {
        var stubs = new StubGenerations(Options());
        using var invoker = stubs.CreateInvoker(out _);

        using var running = await invoker.Send();
        var body = await running.Content.ReadAsStreamAsync();
        stubs.Time.Advance(TimeSpan.FromSeconds(11));
        await invoker.SendAndRead();
        Assert.False(stubs.Created[0].IsDisposed);

        // grpc-dotnet waits for data with zero-byte reads: they must not count as the end of the stream.
        Assert.Equal(0, await body.ReadAsync(Memory<byte>.Empty));
        Assert.False(stubs.Created[0].IsDisposed);

        var buffer = new byte[8];
        Assert.Equal(3, await body.ReadAsync(buffer));
        Assert.False(stubs.Created[0].IsDisposed);
        Assert.Equal(0, await body.ReadAsync(buffer));
        Assert.True(stubs.Created[0].IsDisposed);
    }

    [Fact]
    public async Task SendAsync_ResponseDisposedUnread_ReleasesConnection()
    {
        var stubs = new StubGenerations(Options());
        using var invoker = stubs.CreateInvoker(out _);

        var response = await invoker.Send();
        stubs.Time.Advance(TimeSpan.FromSeconds(11));
        await invoker.SendAndRead();
        Assert.False(stubs.Created[0].IsDisposed);

        response.Dispose();
        Assert.True(stubs.Created[0].IsDisposed);
    }

    [Fact]
    public async Task SendAsync_SeveralConnections_SpreadsCallsRoundRobin()
    {
        var stubs = new StubGenerations(Options(o => o.ConnectionsPerEndpoint = 4));
        using var invoker = stubs.CreateInvoker(out _);

        for (var i = 0; i < 40; i++)
        {
            await invoker.SendAndRead();
        }

        Assert.Equal(4, stubs.Created.Count);
        Assert.All(stubs.Created, h => Assert.Equal(10, h.Calls));
    }

    [Fact]
    public async Task SendAsync_ConnectionWithCallsPilingUp_GetsNoNewCallsWhileOthersAreFree()
    {
        var stubs = new StubGenerations(Options(o => o.ConnectionsPerEndpoint = 2));
        using var invoker = stubs.CreateInvoker(out var handler);

        // A call that does not end (a slow or silently dead pod) holds slot 0.
        using var stuck = await invoker.Send();
        for (var i = 0; i < 10; i++)
        {
            await invoker.SendAndRead();
        }

        Assert.Equal([1, 10], stubs.Created.Select(h => h.Calls));
        Assert.Equal(1, handler.Slots[0].ActiveCalls);
        Assert.Equal(0, handler.Slots[1].ActiveCalls);
    }

    [Fact]
    public async Task SendAsync_OneSlotsNewConnectionsFail_CallsGoToTheHealthySlotUntilThePenaltyEnds()
    {
        var failing = false;
        var stubs = new StubGenerations(Options(o => o.ConnectionsPerEndpoint = 2));
        stubs.OnCreate = h => h.Failure = failing ? new HttpRequestException(HttpRequestError.ConnectionError, "refused", new SocketException()) : null;
        using var invoker = stubs.CreateInvoker(out var handler);

        // Slot 0 holds a healthy connection with a call running; then slot 1's new connections are refused (a dead pod
        // the ClusterIP still routes to). A slot that fails fast has no running calls: it must not look the least busy.
        using var running = await invoker.Send();
        failing = true;
        await Assert.ThrowsAsync<HttpRequestException>(invoker.Send);
        for (var i = 0; i < 10; i++)
        {
            await invoker.SendAndRead();
        }

        Assert.Equal(11, stubs.Created[0].Calls);
        Assert.Equal(2, stubs.Created.Count);

        // After the penalty the slot is less busy again, and takes the next call on a new connection.
        failing = false;
        stubs.Time.Advance(TimeSpan.FromSeconds(1));
        await invoker.SendAndRead();
        Assert.Equal(3, stubs.Created.Count);
        Assert.Equal(1, stubs.Created[2].Calls);
        Assert.NotNull(handler.Slots[1].Current);
    }

    [Fact]
    public async Task SendAsync_DrainingConnectionFailsLater_DoesNotPenaliseTheSlotsNewConnection()
    {
        // A call still waiting on a connection that its age retired fails when that connection dies (its pod went
        // away). The slot's new connection, elsewhere, is healthy: it must keep taking calls as usual.
        var stubs = new StubGenerations(Options());
        var pending = new TaskCompletionSource<HttpResponseMessage>(TaskCreationOptions.RunContinuationsAsynchronously);
        stubs.OnCreate = h => h.Pending = h.Id == 0 ? pending : null;
        using var invoker = stubs.CreateInvoker(out var handler);

        var waiting = invoker.Send();
        stubs.Time.Advance(TimeSpan.FromSeconds(10));
        await invoker.SendAndRead();
        pending.SetException(new HttpRequestException(HttpRequestError.ConnectionError, "reset", new SocketException()));
        await Assert.ThrowsAsync<HttpRequestException>(() => waiting);

        Assert.Equal(2, stubs.Created.Count);
        Assert.False(stubs.Created[1].IsDisposed);
        Assert.Equal(0, handler.Slots[0].Load); // its calls running: none; not the failed-connection penalty
    }

    [Fact]
    public async Task SendAsync_SeveralConnections_StaggersFirstRetirements()
    {
        // Slot i of K first lives (i + 1) / K of an age: with K = 4 and age 10 s, at 2.5, 5, 7.5 and 10 s.
        var stubs = new StubGenerations(Options(o => { o.ConnectionsPerEndpoint = 4; o.MaxConnectionAgeJitter = 0; }));
        using var invoker = stubs.CreateInvoker(out var handler);
        for (var i = 0; i < 4; i++)
        {
            await invoker.SendAndRead();
        }

        var retiredAt = new List<int>();
        for (var step = 1; step <= 8; step++)
        {
            stubs.Time.Advance(TimeSpan.FromSeconds(1.25));
            for (var i = 0; i < 4; i++)
            {
                await invoker.SendAndRead();
            }

            if (stubs.Created.Count(h => h.IsDisposed) > retiredAt.Count)
            {
                retiredAt.Add(step);
            }
        }

        Assert.Equal([2, 4, 6, 8], retiredAt);
    }

    [Fact]
    public async Task SendAsync_HeavyConcurrencyWithRecycling_NeverUsesDisposedHandlerOrExceedsBudget()
    {
        var stubs = new StubGenerations(Options(o => { o.MaxRequestsPerConnection = 5; o.ConnectionsPerEndpoint = 3; }));
        using var invoker = stubs.CreateInvoker(out var handler);

        // 8 workers × 500 calls, each either read to the end or disposed unread: any race between a retirement
        // and a new call shows up as an ObjectDisposedException from a stub.
        var workers = Enumerable.Range(0, 8).Select(w => Task.Run(async () =>
        {
            for (var i = 0; i < 500; i++)
            {
                if ((i + w) % 2 == 0)
                {
                    await invoker.SendAndRead();
                }
                else
                {
                    (await invoker.Send()).Dispose();
                }
            }
        }));
        await Task.WhenAll(workers);

        var created = stubs.Created;
        Assert.Equal(4000, created.Sum(h => h.Calls));
        Assert.All(created, h => Assert.InRange(h.Calls, 1, 5));
        var current = handler.Slots.Select(s => s.Current).OfType<HandlerGeneration>().Count();
        Assert.Equal(created.Count - current, created.Count(h => h.IsDisposed));
    }

    [Fact]
    public async Task SendAsync_DrainTimeoutExpires_CutsRunningCallAsUnavailableAndCloses()
    {
        var stubs = new StubGenerations(Options(o => o.DrainTimeout = TimeSpan.FromSeconds(5)));
        using var invoker = stubs.CreateInvoker(out _);

        using var running = await invoker.Send();
        var body = await running.Content.ReadAsStreamAsync();
        stubs.Time.Advance(TimeSpan.FromSeconds(11));
        await invoker.SendAndRead();
        stubs.Time.Advance(TimeSpan.FromSeconds(4.9));
        Assert.False(stubs.Created[0].IsDisposed);

        stubs.Time.Advance(TimeSpan.FromSeconds(0.2));
        var failure = await Assert.ThrowsAnyAsync<IOException>(async () => await body.ReadAsync(new byte[8]));
        Assert.IsType<HttpIOException>(failure);
        Assert.Contains("DrainTimeout", failure.Message, StringComparison.Ordinal);
        Assert.True(stubs.Created[0].IsDisposed);
    }

    [Fact]
    public async Task SendAsync_LastCallOfRetiredConnectionFailsUnderDrainTimeout_ThrowsTheCallsOwnFailure()
    {
        // Every call retires its connection as it starts, so each failing call releases the connection's last lease
        // (which disposes its DrainTimeout token source) before its failure is classified.
        var stubs = new StubGenerations(Options(o =>
        {
            o.DrainTimeout = TimeSpan.FromMinutes(1);
            o.MaxRequestsPerConnection = 1;
        }));
        stubs.OnCreate = h => h.Failure = h.Id == 0
            ? new HttpRequestException(HttpRequestError.ConnectionError, "refused", new SocketException((int)SocketError.ConnectionRefused))
            : new TaskCanceledException("caller gave up");
        using var invoker = stubs.CreateInvoker(out _);

        await Assert.ThrowsAsync<HttpRequestException>(invoker.Send);
        await Assert.ThrowsAsync<TaskCanceledException>(invoker.Send);
        Assert.All(stubs.Created, h => Assert.True(h.IsDisposed));
    }

    [Fact]
    public async Task SendAsync_ConnectTimeout_FailsAsConnectionErrorAndRetiresConnection()
    {
        var stubs = new StubGenerations(Options());
        using var collector = new MetricCollector<long>(stubs.Metrics.Retired);
        stubs.OnCreate = h => h.Failure = h.Id == 0
            ? new TaskCanceledException("The request was canceled.", new TimeoutException("A connection could not be established within the configured ConnectTimeout."))
            : null;
        using var invoker = stubs.CreateInvoker(out _);

        var failure = await Assert.ThrowsAsync<HttpRequestException>(invoker.Send);
        await invoker.SendAndRead();

        Assert.Equal(HttpRequestError.ConnectionError, failure.HttpRequestError);
        Assert.Contains("ConnectTimeout", failure.Message, StringComparison.Ordinal);
        Assert.IsType<HttpIOException>(failure.InnerException); // what grpc-dotnet maps to Unavailable
        Assert.True(stubs.Created[0].IsDisposed);
        Assert.Equal("connection_failure", Assert.Single(collector.GetMeasurementSnapshot()).Tags["reason"]);
    }

    [Fact]
    public async Task SendAsync_CallerCancelsWhileConnecting_StaysCancellation()
    {
        var stubs = new StubGenerations(Options());
        using var cancelled = new CancellationTokenSource();
        stubs.OnCreate = h =>
        {
            // The caller cancels once the call has a connection slot, while "connecting".
            h.Failure = new TaskCanceledException("The request was canceled.", new TimeoutException("connect"));
            cancelled.Cancel();
        };
        using var invoker = stubs.CreateInvoker(out _);

        await Assert.ThrowsAsync<TaskCanceledException>(() => invoker.SendAsync(new HttpRequestMessage(HttpMethod.Post, "http://pod/svc/Method"), cancelled.Token));
        Assert.False(stubs.Created[0].IsDisposed);
    }

    [Fact]
    public async Task SendAsync_CancelledBeforeSending_SpendsNoRequestBudgetAndRetiresNothing()
    {
        var stubs = new StubGenerations(Options(o => o.MaxRequestsPerConnection = 1));
        using var retired = new MetricCollector<long>(stubs.Metrics.Retired);
        using var invoker = stubs.CreateInvoker(out _);
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();

        for (var i = 0; i < 3; i++)
        {
            await Assert.ThrowsAnyAsync<OperationCanceledException>(
                () => invoker.SendAsync(new HttpRequestMessage(HttpMethod.Post, "http://pod/svc/Method"), cancelled.Token));
        }

        Assert.Empty(stubs.Created);
        Assert.Empty(retired.GetMeasurementSnapshot());
    }

    [Fact]
    public async Task SendAsync_ConnectionLost_RetiresConnectionAndNextCallUsesNewOne()
    {
        var stubs = new StubGenerations(Options());
        using var collector = new MetricCollector<long>(stubs.Metrics.Retired);
        stubs.OnCreate = h => h.Failure = h.Id == 0 ? new HttpRequestException(HttpRequestError.ConnectionError, "refused", new SocketException()) : null;
        using var invoker = stubs.CreateInvoker(out _);

        await Assert.ThrowsAsync<HttpRequestException>(invoker.Send);
        await invoker.SendAndRead();

        Assert.Equal(2, stubs.Created.Count);
        Assert.True(stubs.Created[0].IsDisposed);
        var retired = Assert.Single(collector.GetMeasurementSnapshot());
        Assert.Equal("connection_failure", retired.Tags["reason"]);
    }

    [Fact]
    public async Task SendAsync_ServerRefusedOneCall_KeepsConnection()
    {
        var stubs = new StubGenerations(Options());
        stubs.OnCreate = h => h.Failure = new HttpRequestException("stream reset", new HttpProtocolException(7, "The HTTP/2 server reset the stream. HTTP/2 error code 'REFUSED_STREAM' (0x7).", null));
        using var invoker = stubs.CreateInvoker(out _);

        await Assert.ThrowsAsync<HttpRequestException>(invoker.Send);
        await Assert.ThrowsAsync<HttpRequestException>(invoker.Send);

        Assert.Single(stubs.Created);
    }

    [Fact]
    public async Task SendAsync_ServerRequiresHttp11_KeepsConnectionAndPassesTheErrorThrough()
    {
        var stubs = new StubGenerations(Options());
        using var retired = new MetricCollector<long>(stubs.Metrics.Retired);
        var goAway = new HttpRequestException("The request was aborted.", new HttpProtocolException(
            0xd, "The HTTP/2 server closed the connection. HTTP/2 error code 'HTTP_1_1_REQUIRED' (0xd).", null));
        stubs.OnCreate = h => h.Failure = goAway;
        using var invoker = stubs.CreateInvoker(out var handler);

        Assert.Same(goAway, await Assert.ThrowsAsync<HttpRequestException>(invoker.Send));
        Assert.Same(goAway, await Assert.ThrowsAsync<HttpRequestException>(invoker.Send));

        var connection = Assert.Single(stubs.Created);
        Assert.False(connection.IsDisposed);
        Assert.Empty(retired.GetMeasurementSnapshot());
        Assert.Equal(0, handler.Slots[0].Load); // no failed-connection penalty either
    }

    [Fact]
    public async Task Dispose_WithRunningCall_DisposesConnectionWhenCallEnds()
    {
        var stubs = new StubGenerations(Options());
        var invoker = stubs.CreateInvoker(out _);
        var running = await invoker.Send();

        invoker.Dispose();
        Assert.False(stubs.Created[0].IsDisposed);
        await Assert.ThrowsAsync<ObjectDisposedException>(invoker.Send);

        running.Dispose();
        Assert.True(stubs.Created[0].IsDisposed);
    }

    [Fact]
    public async Task Retire_ReportsReasonAndDrainingConnections()
    {
        var stubs = new StubGenerations(Options());
        using var retired = new MetricCollector<long>(stubs.Metrics.Retired);
        using var draining = new MetricCollector<long>(stubs.Metrics.Draining);
        using var invoker = stubs.CreateInvoker(out _);

        var running = await invoker.Send();
        stubs.Time.Advance(TimeSpan.FromSeconds(11));
        await invoker.SendAndRead();
        Assert.Equal("age", Assert.Single(retired.GetMeasurementSnapshot()).Tags["reason"]);
        Assert.Equal(1, draining.GetMeasurementSnapshot().Sum(m => m.Value));

        running.Dispose();
        Assert.Equal(0, draining.GetMeasurementSnapshot().Sum(m => m.Value));
    }
}
