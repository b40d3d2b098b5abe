namespace ConnectionRefresh.Server;

/// <summary>
/// Tells the calls of a connection that the server has started to close it gracefully (an HTTP/2 GOAWAY): because of
/// <see cref="ServerConnectionAgeOptions.MaxConnectionAge"/> or <see cref="ServerConnectionAgeOptions.MaxConnectionIdle"/>,
/// or because the server is shutting down (a pod exiting: SIGTERM, <c>IHost.StopAsync</c>; Kestrel then closes every
/// connection). A long-running stream can then end cleanly (for example tell its client to call again, which opens a
/// new connection, to another server) before <see cref="GracePeriod"/> ends and the connection is aborted.
/// </summary>
/// <remarks>
/// One instance per connection, set by the server-side connection age middleware on the connection's features;
/// Kestrel makes connection features visible to every request of the connection, so a gRPC method reaches it with
/// <c>context.GetHttpContext().Features.Get&lt;IConnectionClosingFeature&gt;()</c> or
/// <see cref="ServerCallContextConnectionClosingExtensions.GetConnectionClosingToken(Grpc.Core.ServerCallContext)"/>.
/// </remarks>
public interface IConnectionClosingFeature
{
    /// <summary>
    /// Cancelled when the graceful close of the connection starts (the GOAWAY is sent): at its age or idle limit, when
    /// Kestrel closes it at server shutdown (after <c>IHostApplicationLifetime.ApplicationStopping</c>, when Kestrel
    /// stops), or when the application's own code asks Kestrel to close it (<c>HttpContext.Connection.RequestClose()</c>).
    /// It is not cancelled when the client closes the connection or the call ends; use
    /// <c>ServerCallContext.CancellationToken</c> for that. Callbacks of a close that Kestrel started run on the
    /// thread pool, shortly after Kestrel sent its GOAWAY.
    /// </summary>
    CancellationToken ConnectionClosing { get; }

    /// <summary>
    /// How long calls may still run once <see cref="ConnectionClosing"/> fired before the connection is aborted:
    /// <see cref="ServerConnectionAgeOptions.MaxConnectionAgeGrace"/> (plus the connection's age when its close was put
    /// off to its first call, see <see cref="ServerConnectionAgeOptions.MaxConnectionAge"/>), or
    /// <see cref="Timeout.InfiniteTimeSpan"/> when running calls are never cut. When it fired because the server is shutting down, the host's
    /// <c>HostOptions.ShutdownTimeout</c> (30 s by default; counted from the start of the shutdown, so an upper bound),
    /// after which Kestrel aborts what still runs; when the application's own code asked for the close,
    /// <see cref="Timeout.InfiniteTimeSpan"/> (Kestrel does not cut the calls). The connection's age and its grace
    /// still apply after such a close.
    /// Always counted from when <see cref="ConnectionClosing"/> fired, and it always reports the earliest end in force:
    /// a close that starts later and ends sooner (the connection reaches its age after the application's or the
    /// shutdown's close; the host begins to stop, <c>HostOptions.ShutdownTimeout</c> counted from then, after a close by
    /// age or idleness or the application's) changes it to the time from when the token fired to that earlier end. It
    /// never grows, and it does not count down: read it again to learn of a later, earlier end (the token does not fire
    /// twice). Before the token fires it is <see cref="ServerConnectionAgeOptions.MaxConnectionAgeGrace"/>.
    /// </summary>
    TimeSpan GracePeriod { get; }
}
