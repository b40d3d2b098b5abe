using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// Kestrel connection middleware: gives every connection a <see cref="ConnectionAgeTracker"/>, reachable by the
/// connection's requests as <see cref="IConnectionClosingFeature"/>, and stops it when the connection ends. When
/// Kestrel has finished an HTTP/2 connection that was not aborted and whose client has not closed its side, the socket
/// lingers until the client has (see <see cref="LingeringTransport"/>), whoever decided to close it: the tracker (age,
/// idleness), Kestrel at server shutdown, or Kestrel's own keep-alive timeout. After a GOAWAY with an error code (a
/// protocol error) it closes at once, as RFC 9113 requires.
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
    private readonly SilentConnectionCloser? _silentCloser;
    private readonly HostStopping _hostStopping;

    public ServerConnectionAgeMiddleware(
        ConnectionDelegate next,
        ConnectionAgeSettings settings,
        TimeProvider time,
        ServerConnectionAgeMetrics metrics,
        ILogger logger,
        Random? random = null,
        SilentConnectionCloser? silentCloser = null,
        HostStopping? hostStopping = null)
    {
        _silentCloser = silentCloser;
        _hostStopping = hostStopping ?? HostStopping.None;
        _next = next;
        _settings = settings;
        _time = time;
        _metrics = metrics;
        _logger = logger;
        _random = random ?? Random.Shared;
    }

    /// <summary>Test seam: the host's closer of silent connections at shutdown, if any.</summary>
    internal SilentConnectionCloser? SilentCloser => _silentCloser;

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
            connection, lifetime, _settings, _settings.DrawAge(_random), _time, _metrics, _logger, _hostStopping);

        // Kestrel's request feature collections fall back to the connection's features, so every request
        // (HTTP/2 stream) of this connection sees these two.
        connection.Features.Set<IConnectionClosingFeature>(tracker);
        connection.Features.Set<IConnectionCallCounter>(tracker);
        var transport = new LingeringTransport(connection.Transport, connection.Features);
        connection.Transport = transport;
        tracker.Start();
        var tracked = _silentCloser?.Add(connection, transport) ?? false;
        try
        {
            await _next(connection).ConfigureAwait(false);
        }
        finally
        {
            if (tracked)
            {
                _silentCloser!.Remove(connection);
            }

            connection.Transport = transport.Inner;

            // The linger rule. Kestrel ends an HTTP/2 connection that it was not asked to abort by writing a GOAWAY
            // and closing at once, whoever decided: this tracker or Kestrel's shutdown (RequestClose), its keep-alive
            // timeout (KeepAliveTimeout, 130 s without a stream) or a protocol error (a GOAWAY with an error code).
            // In each case a client may have picked the connection for a new call just before, and lose it if the
            // socket closes before it read the GOAWAY: so the socket lingers, unless
            // - Kestrel's GOAWAY carried an error code: after a connection error RFC 9113 (section 5.4.1) requires
            //   closing the TCP connection, and a client that broke the protocol has nothing to retry. Known only where
            //   the transport sees HTTP/2 in clear (not under TLS when this middleware runs outside it): otherwise the
            //   rule is the same as for a graceful close;
            // - this package aborted the connection (its grace ended; Ended() ends the connection in the same step, so
            //   no abort starts after this decision), or the transport reports it closed: aborted by Kestrel, or the
            //   client is gone. An abort that is not reported yet ends the linger at once anyway: its input ends;
            // - the client closed its side first: Kestrel's socket transport reports that end as closed too (then its end
            //   is never read here), and if not yet, the linger's first read returns that end, without waiting;
            // - the connection is not HTTP/2: HTTP/1.1 has no GOAWAY for the client to read first, and a socket held
            //   open there is reused by clients for a request that is never answered. Under TLS that runs inside this
            //   middleware (the order endpoint defaults give), ALPN's answer is the one the transport noted while
            //   Kestrel's SslStream lived: that stream is disposed by now. A client whose first bytes were an HTTP/1.x
            //   request (which an HTTP/2-only endpoint rejects, with no GOAWAY) gets no linger either.
            // - the client never sent a byte (a pre-connected spare socket, as grpc-dotnet's balancer keeps one): no
            //   request can be in flight, and closing at once lets the client see the socket closed and dial anew.
            //   grpc-dotnet checks its spare for closure before use but hands over an open one with the GOAWAY
            //   already buffered, and that connection's handshake then fails the call. At server shutdown such a
            //   connection was already shut at ApplicationStopping (SilentConnectionCloser), before Kestrel's GOAWAY.
            // The age is recorded once the linger is decided and its deadline set, so that whoever sees it (metrics,
            // tests) sees the decision made and the deadline already running.
            var notAbortedByUs = tracker.Ended();
            var linger = notAbortedByUs
                && !connection.ConnectionClosed.IsCancellationRequested
                && (transport.NegotiatedHttp2 ?? ConnectionProtocol.IsHttp2(connection.Features, _settings.EndpointProtocols))
                && transport.ClientSentData
                && !transport.ClientSentHttp1Request
                && !transport.SentErrorGoAway;
            var closing = transport.CloseAsync(linger, ServerConnectionAgeDefaults.MaxGoAwayLinger, _time);
            tracker.RecordAge();
            if (await closing.ConfigureAwait(false))
            {
                ServerConnectionAgeLog.LingerExpired(_logger, connection.ConnectionId, ServerConnectionAgeDefaults.MaxGoAwayLinger);
            }
        }
    }
}
