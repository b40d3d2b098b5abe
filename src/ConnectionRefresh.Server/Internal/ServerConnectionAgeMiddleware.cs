using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// Kestrel connection middleware: gives every connection a <see cref="ConnectionAgeTracker"/>, reachable by the
/// connection's requests as <see cref="IConnectionClosingFeature"/>, and stops it when the connection ends. After a
/// graceful close of an HTTP/2 connection (started by the tracker, or by Kestrel when the server stops), the socket
/// lingers until the client has closed its side (see <see cref="LingeringTransport"/>).
/// </summary>
/// <remarks>
/// Thread safety: shared by all connections of an endpoint; it holds only immutable settings and thread-safe
/// services (<see cref="Random.Shared"/> is thread-safe), all per-connection state lives in the tracker.
/// </remarks>
internal sealed class ServerConnectionAgeMiddleware
{
    private readonly ConnectionDelegate _next;
    private readonly ConnectionAgeSettings _settings;
    private readonly TimeProvider _time;
    private readonly ServerConnectionAgeMetrics _metrics;
    private readonly ILogger _logger;
    private readonly Random _random;

    public ServerConnectionAgeMiddleware(
        ConnectionDelegate next,
        ConnectionAgeSettings settings,
        TimeProvider time,
        ServerConnectionAgeMetrics metrics,
        ILogger logger,
        Random? random = null)
    {
        _next = next;
        _settings = settings;
        _time = time;
        _metrics = metrics;
        _logger = logger;
        _random = random ?? Random.Shared;
    }

    public async Task OnConnectionAsync(ConnectionContext connection)
    {
        var lifetime = connection.Features.Get<IConnectionLifetimeNotificationFeature>();
        if (lifetime is null)
        {
            ServerConnectionAgeLog.NoLifetimeNotification(_logger, connection.ConnectionId);
            await _next(connection).ConfigureAwait(false);
            return;
        }

        var tracker = new ConnectionAgeTracker(
            connection, lifetime, _settings, _settings.DrawAge(_random), _time, _metrics, _logger);

        // Kestrel's request feature collections fall back to the connection's features, so every request
        // (HTTP/2 stream) of this connection sees these two.
        connection.Features.Set<IConnectionClosingFeature>(tracker);
        connection.Features.Set<IConnectionCallCounter>(tracker);
        var transport = new LingeringTransport(connection.Transport);
        connection.Transport = transport;
        tracker.Start();
        try
        {
            await _next(connection).ConfigureAwait(false);
        }
        finally
        {
            connection.Transport = transport.Inner;

            // One step: the connection ends (no close or abort starts after it) and tells whether it had been closed
            // gracefully (by this package, or by Kestrel at shutdown) and not aborted; then the socket lingers, but
            // only after an HTTP/2 GOAWAY: HTTP/1.1 has nothing for the client to read first, and a socket held open
            // there is reused by clients for a request that is never answered. A transport that already reports the
            // connection closed (aborted by Kestrel, or the client is gone) has nothing to wait for. The age is
            // recorded once the linger's deadline is set, so that whoever sees it (metrics, tests) sees the deadline
            // already running.
            var closedGracefully = tracker.Ended();
            var linger = closedGracefully
                && !connection.ConnectionClosed.IsCancellationRequested
                && ConnectionProtocol.IsHttp2(connection.Features, _settings.EndpointProtocols);
            var closing = transport.CloseAsync(linger, ServerConnectionAgeDefaults.MaxGoAwayLinger, _time);
            tracker.RecordAge();
            if (await closing.ConfigureAwait(false))
            {
                ServerConnectionAgeLog.LingerExpired(_logger, connection.ConnectionId, ServerConnectionAgeDefaults.MaxGoAwayLinger);
            }
        }
    }
}
