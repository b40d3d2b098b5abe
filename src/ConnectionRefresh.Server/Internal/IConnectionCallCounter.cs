namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// Counts the running calls (HTTP/2 streams) of one connection; set on the connection's features and called by
/// <see cref="ConnectionCallCountingMiddleware"/> around every request of the connection.
/// </summary>
internal interface IConnectionCallCounter
{
    void CallStarted();

    void CallEnded();
}
