namespace ConnectionRefresh.Server.Internal;

/// <summary>Defaults and allowed ranges of <see cref="ServerConnectionAgeOptions"/>, in one place.</summary>
internal static class ServerConnectionAgeDefaults
{
    /// <summary>The configuration section the options are bound from unless the caller names another.</summary>
    public const string SectionName = "ConnectionRefresh:Server";

    public static readonly TimeSpan MaxConnectionAge = TimeSpan.FromMinutes(5);
    public const double MaxConnectionAgeJitter = 0.1;
    public static readonly TimeSpan MaxConnectionAgeGrace = Timeout.InfiniteTimeSpan;
    public static readonly TimeSpan MaxConnectionIdle = Timeout.InfiniteTimeSpan;

    /// <summary>
    /// Longest time an HTTP/2 connection that Kestrel ended gracefully, without an abort (closed by this package, by
    /// the server stopping or by Kestrel's keep-alive timeout; not after a protocol error) stays open after Kestrel
    /// finished with it, waiting for the client to close its side (see <see cref="LingeringTransport"/>). Clients
    /// close within milliseconds of reading the GOAWAY; the bound is for clients that never do, and it is also the
    /// most a linger adds to the host's StopAsync.
    /// </summary>
    public static readonly TimeSpan MaxGoAwayLinger = TimeSpan.FromSeconds(5);

    public static readonly TimeSpan MinAge = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MaxAge = TimeSpan.FromHours(24);
    public const double MinJitter = 0;
    public const double MaxJitter = 0.5;
    public static readonly TimeSpan MinGrace = TimeSpan.Zero;
    public static readonly TimeSpan MaxGrace = TimeSpan.FromHours(24);
    public static readonly TimeSpan MinIdle = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MaxIdle = TimeSpan.FromHours(24);
}
