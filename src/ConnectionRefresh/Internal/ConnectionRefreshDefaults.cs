namespace ConnectionRefresh.Internal;

/// <summary>Defaults and allowed ranges of <see cref="ConnectionRefreshOptions"/>, in one place.</summary>
internal static class ConnectionRefreshDefaults
{
    public const string SectionName = "ConnectionRefresh";

    public static readonly TimeSpan MaxConnectionAge = TimeSpan.FromMinutes(2);
    public const double MaxConnectionAgeJitter = 0.1;
    public static readonly TimeSpan KeepAlivePingDelay = TimeSpan.FromMinutes(5);
    public static readonly TimeSpan KeepAlivePingTimeout = TimeSpan.FromSeconds(20);
    public static readonly TimeSpan PooledConnectionIdleTimeout = TimeSpan.FromMinutes(1);
    public static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(10);

    /// <summary>
    /// After its connection failed, a slot counts as fully busy for this long (when K > 1): a slot whose new
    /// connections are refused fails fast, so it would otherwise look the least busy and attract calls.
    /// </summary>
    public static readonly TimeSpan FailedSlotPenalty = TimeSpan.FromSeconds(1);

    public static readonly TimeSpan MinAge = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MaxAge = TimeSpan.FromHours(24);
    public const double MaxJitter = 0.5;
    public const int MaxRequests = 1_000_000_000;
    public const int MaxConnections = 64;
    public static readonly TimeSpan MinPing = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MaxPingTimeout = TimeSpan.FromHours(1);
    public static readonly TimeSpan MinConnectTimeout = TimeSpan.FromMilliseconds(100);
    public static readonly TimeSpan MaxConnectTimeout = TimeSpan.FromMinutes(10);
}
