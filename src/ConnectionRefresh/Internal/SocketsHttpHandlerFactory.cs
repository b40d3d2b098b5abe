using System.Diagnostics.Metrics;
using System.Net.Sockets;
using Microsoft.Extensions.DependencyInjection;

namespace ConnectionRefresh.Internal;

/// <summary>
/// Builds the SocketsHttpHandler of each generation: the refresh settings first, then the application's own
/// configuration (TLS, proxy, ...), then a connect callback that counts connections (wrapping the
/// application's callback when it set one) and tells the generation when they open and close. Immutable.
/// </summary>
internal sealed class SocketsHttpHandlerFactory
{
    private readonly ConnectionRefreshOptions _options;
    private readonly IReadOnlyList<Action<SocketsHttpHandler, IServiceProvider>> _configure;
    private readonly IServiceProvider _services;
    private readonly ConnectionRefreshTelemetry _telemetry;
    private readonly bool _grpc;

    public SocketsHttpHandlerFactory(
        ConnectionRefreshOptions options,
        IReadOnlyList<Action<SocketsHttpHandler, IServiceProvider>> configure,
        IServiceProvider services,
        ConnectionRefreshTelemetry telemetry,
        bool grpc)
    {
        _options = options;
        _configure = configure;
        _services = services;
        _telemetry = telemetry;
        _grpc = grpc;
    }

    /// <param name="generation">
    /// Told when the handler's connections open and close; not for connections made by an application's own
    /// ConnectCallback, whose streams may be of any type.
    /// </param>
    public SocketsHttpHandler Create(HandlerGeneration? generation)
    {
        var handler = new SocketsHttpHandler
        {
            // The slot retires connections itself; a pooled lifetime would also stop their keepalive pings.
            PooledConnectionLifetime = Timeout.InfiniteTimeSpan,
            PooledConnectionIdleTimeout = _options.PooledConnectionIdleTimeout,
            ConnectTimeout = _options.ConnectTimeout,
            KeepAlivePingDelay = _options.KeepAlivePingDelay,
            KeepAlivePingTimeout = _options.KeepAlivePingTimeout,
            KeepAlivePingPolicy = _options.KeepAlivePingPolicy,
            // Past the server's stream limit a slot opens another connection instead of queueing calls.
            EnableMultipleHttp2Connections = true,
            // gRPC never follows redirects; without them SocketsHttpHandler skips a layer on every call.
            AllowAutoRedirect = !_grpc,
        };

        foreach (var configure in _configure)
        {
            configure(handler, _services);
        }

        // HttpClientFactory gives the application's IMeterFactory to a SocketsHttpHandler primary handler (unless one is
        // set), which ours no longer is: without this the runtime's http.client.* metrics leave the application's meters.
        handler.MeterFactory ??= _services.GetService<IMeterFactory>();

        var connect = handler.ConnectCallback ?? ((context, cancellationToken) => ConnectAsync(context, generation, cancellationToken));
        var telemetry = _telemetry;
        handler.ConnectCallback = async (context, cancellationToken) =>
        {
            var stream = await connect(context, cancellationToken).ConfigureAwait(false);
            telemetry.Opened(context.DnsEndPoint.Host, context.DnsEndPoint.Port);
            return stream;
        };
        return handler;
    }

    // What SocketsHttpHandler does without a callback: a dual-mode socket, no Nagle delay.
    private static async ValueTask<Stream> ConnectAsync(SocketsHttpConnectionContext context, HandlerGeneration? generation, CancellationToken cancellationToken)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(context.DnsEndPoint, cancellationToken).ConfigureAwait(false);
            return generation is null ? new NetworkStream(socket, ownsSocket: true) : new ConnectionStream(socket, generation);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}

/// <summary>
/// The stream of one connection of a generation, which tells the generation when the connection closes (SocketsHttpHandler
/// disposes it then, also after a GOAWAY once the last stream has ended). A NetworkStream itself rather than a wrapper, so
/// nothing changes for SocketsHttpHandler, which looks for a NetworkStream (the remote address in its metrics and traces,
/// socket polls for synchronous requests), and asynchronous reads and writes take no extra step (synchronous span reads,
/// used only by synchronous HTTP/1.1 requests, go through Stream's copying defaults: rare enough not to reimplement them).
/// </summary>
/// <remarks>Thread-safe: the generation is told once, by whichever Dispose (or the finalizer) comes first.</remarks>
internal sealed class ConnectionStream : NetworkStream
{
    private HandlerGeneration? _generation;
    private readonly OpenConnection _connection;

    public ConnectionStream(Socket socket, HandlerGeneration generation)
        : base(socket, ownsSocket: true)
    {
        _generation = generation;
        _connection = generation.ConnectionOpened();
    }

    protected override void Dispose(bool disposing)
    {
        Interlocked.Exchange(ref _generation, null)?.ConnectionClosed(_connection);
        base.Dispose(disposing);
    }
}
