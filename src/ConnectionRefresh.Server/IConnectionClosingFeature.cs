namespace ConnectionRefresh.Server;

/// <summary>
/// Tells the calls of a connection that the server has started to close it gracefully (an HTTP/2 GOAWAY because
/// of <see cref="ServerConnectionAgeOptions.MaxConnectionAge"/> or <see cref="ServerConnectionAgeOptions.MaxConnectionIdle"/>).
/// A long-running stream can then end cleanly (for example tell its client to call again, which opens a new
/// connection) before <see cref="GracePeriod"/> ends and the connection is aborted.
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
    /// Cancelled when the graceful close of the connection starts (the GOAWAY is sent). It is not cancelled when
    /// the client closes the connection or the call ends; use <c>ServerCallContext.CancellationToken</c> for that.
    /// </summary>
    CancellationToken ConnectionClosing { get; }

    /// <summary>
    /// How long calls may still run once <see cref="ConnectionClosing"/> fired before the connection is aborted:
    /// <see cref="ServerConnectionAgeOptions.MaxConnectionAgeGrace"/>, or <see cref="Timeout.InfiniteTimeSpan"/>
    /// when running calls are never cut.
    /// </summary>
    TimeSpan GracePeriod { get; }
}
