using System.Buffers;
using System.Diagnostics.Metrics;
using ConnectionRefresh.Server.Internal;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Logging.Testing;
using Microsoft.Extensions.Time.Testing;

namespace ConnectionRefresh.Server.Tests.TestSupport;

/// <summary>
/// Runs <see cref="ServerConnectionAgeMiddleware"/> over <see cref="FakeConnection"/>s with a
/// <see cref="FakeTimeProvider"/>: time moves only when a test calls <see cref="Advance"/>, and timer callbacks run
/// synchronously inside it.
/// </summary>
internal sealed class MiddlewareHarness : IDisposable
{
    private readonly ServiceProvider _services;
    private readonly ServerConnectionAgeMiddleware _middleware;
    private readonly List<(FakeConnection Connection, Task Run)> _connections = [];
    private readonly HookedTimeProvider _hookedTime;

    public MiddlewareHarness(
        ServerConnectionAgeOptions options,
        int seed = 1,
        bool callsCounted = false,
        HttpProtocols protocols = HttpProtocols.Http2,
        HostStopping? hostStopping = null)
    {
        _services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var meterFactory = _services.GetRequiredService<IMeterFactory>();
        Closes = new MetricCollector<long>(meterFactory, ServerConnectionAgeMetrics.MeterName, ServerConnectionAgeMetrics.ClosesName);
        Aborts = new MetricCollector<long>(meterFactory, ServerConnectionAgeMetrics.MeterName, ServerConnectionAgeMetrics.AbortsName);
        Ages = new MetricCollector<double>(meterFactory, ServerConnectionAgeMetrics.MeterName, ServerConnectionAgeMetrics.AgeName);
        _hookedTime = new HookedTimeProvider(Time);
        _middleware = new ServerConnectionAgeMiddleware(
            connection => ((FakeConnection)connection).End.Task,
            ConnectionAgeSettings.From(options, callsCounted, protocols),
            _hookedTime,
            new ServerConnectionAgeMetrics(meterFactory),
            Logger,
            new Random(seed),
            hostStopping: hostStopping);
    }

    public FakeTimeProvider Time { get; } = new(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero));

    public FakeLogger Logger { get; } = new();

    public MetricCollector<long> Closes { get; }

    public MetricCollector<long> Aborts { get; }

    public MetricCollector<double> Ages { get; }

    /// <summary>
    /// Opens a connection through the middleware. With <paramref name="clientSpoke"/> (the usual case), "Kestrel" has
    /// already read the client's first bytes (its HTTP/2 preface); without, the client never sent any, like a
    /// pre-connected spare socket.
    /// </summary>
    public FakeConnection Open(bool withLifetimeNotification = true, bool clientSpoke = true)
    {
        var connection = new FakeConnection("c" + _connections.Count, withLifetimeNotification);
        var run = _middleware.OnConnectionAsync(connection);
        _connections.Add((connection, run));
        if (clientSpoke)
        {
            // The middleware is waiting in Kestrel's part now, so the transport is the one Kestrel reads from.
            connection.ClientToServer.Writer.Write("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8);
            _ = connection.ClientToServer.Writer.FlushAsync().AsTask().GetAwaiter().GetResult();
            var input = connection.Transport.Input;
            if (!input.TryRead(out var preface))
            {
                throw new InvalidOperationException("the client's preface should be readable at once");
            }

            input.AdvanceTo(preface.Buffer.End);
        }

        return connection;
    }

    public void Advance(TimeSpan by) => Time.Advance(by);

    /// <summary>
    /// Runs <paramref name="action"/> once, when the middleware or a tracker next creates a timer, before it does:
    /// lets a test make time pass (and timers fire) at that exact point.
    /// </summary>
    public void BeforeNextTimer(Action action) => _hookedTime.BeforeNextTimer(action);

    /// <summary>
    /// Ends the connection the way it ends for real: Kestrel completes the transport and returns, the client closes
    /// its side; then waits for the middleware.
    /// </summary>
    public async Task EndAsync(FakeConnection connection)
    {
        EndServerSide(connection);
        connection.ClientToServer.Writer.Complete();
        await Run(connection);
    }

    /// <summary>Kestrel is done with the connection (completes the transport it was given and returns).</summary>
    public static void EndServerSide(FakeConnection connection)
    {
        connection.ServerCompletesTransport();
        connection.End.TrySetResult();
    }

    public Task Run(FakeConnection connection) => _connections.Single(c => c.Connection == connection).Run;

    public static IConnectionCallCounter Counter(FakeConnection connection) =>
        connection.Features.Get<IConnectionCallCounter>() ?? throw new InvalidOperationException("no call counter");

    public void Dispose()
    {
        foreach (var (connection, _) in _connections)
        {
            connection.End.TrySetResult();
            connection.ClientToServer.Writer.Complete();
        }

        Closes.Dispose();
        Aborts.Dispose();
        Ages.Dispose();
        _services.Dispose();
    }
}
