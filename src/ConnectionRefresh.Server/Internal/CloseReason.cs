namespace ConnectionRefresh.Server.Internal;

/// <summary>Why a connection was closed, as the metrics tag it (<c>connectionrefresh.close.reason</c>).</summary>
internal enum CloseReason
{
    /// <summary>
    /// Not closed by this package (yet) nor at shutdown: the client closed it, Kestrel ended it by itself (keep-alive
    /// timeout, protocol error), or the application's own code asked Kestrel to close it.
    /// </summary>
    None,

    /// <summary><see cref="ServerConnectionAgeOptions.MaxConnectionAge"/> (with jitter) was reached.</summary>
    MaxAge,

    /// <summary><see cref="ServerConnectionAgeOptions.MaxConnectionIdle"/> passed without a running call.</summary>
    MaxIdle,

    /// <summary>
    /// Kestrel closed it gracefully (GOAWAY) because the application was stopping; not a close this package started
    /// (not counted in <c>connectionrefresh.server.connection.closes</c>), only the tag of the connection's age.
    /// </summary>
    Shutdown,
}
