namespace ConnectionRefresh.Server.Internal;

/// <summary>Why this package closed a connection.</summary>
internal enum CloseReason
{
    /// <summary>Not closed by this package (yet): the client closed it, or the server stopped.</summary>
    None,

    /// <summary><see cref="ServerConnectionAgeOptions.MaxConnectionAge"/> (with jitter) was reached.</summary>
    MaxAge,

    /// <summary><see cref="ServerConnectionAgeOptions.MaxConnectionIdle"/> passed without a running call.</summary>
    MaxIdle,
}
