using ConnectionRefresh.Server.Internal;

namespace ConnectionRefresh.Server;

/// <summary>
/// When Kestrel closes client connections on its own, so that clients reconnect and kube-proxy balances them
/// again: the server-side <c>MaxConnectionAge</c>, <c>MaxConnectionAgeGrace</c> and <c>MaxConnectionIdle</c> of
/// grpc-go and grpc-java (gRFC A9). Bound from the <c>ConnectionRefresh:Server</c> configuration section by default.
/// </summary>
/// <remarks>
/// A connection is closed gracefully: the server sends an HTTP/2 GOAWAY, clients send new calls on a new
/// connection, and calls already running finish. Every setting is checked at start-up; a bad value fails with a
/// message that names the setting, the value and the allowed range, and an unknown configuration key fails too.
/// </remarks>
public sealed class ServerConnectionAgeOptions
{
    /// <summary>
    /// Age after which a connection is closed gracefully (GOAWAY). Default 5 minutes: registering this package
    /// means rotation is wanted, and 5 minutes follows a scale-out within minutes while reconnecting costs nothing
    /// measurable. <see cref="Timeout.InfiniteTimeSpan"/> disables it (for example to use only
    /// <see cref="MaxConnectionIdle"/>). Range: 1 second to 24 hours, or infinite.
    /// </summary>
    /// <remarks>
    /// With <c>services.AddServerConnectionAge(...)</c> registered, a connection that reaches its age before its
    /// first call (a client's pre-connected spare socket) is closed when that first call starts, while the call runs:
    /// Kestrel closes a connection that has not begun HTTP/2 with a GOAWAY in place of its SETTINGS, and a client
    /// starting to use it at that moment would fail its handshake and the call. The calls running then get what they
    /// would have had on a new connection before an abort: its age plus <see cref="MaxConnectionAgeGrace"/>.
    /// </remarks>
    public TimeSpan MaxConnectionAge { get; set; } = ServerConnectionAgeDefaults.MaxConnectionAge;

    /// <summary>
    /// Fraction by which each connection's age is randomised: it is drawn uniformly from
    /// <c>MaxConnectionAge × [1 − j, 1 + j]</c> when the connection opens, so connections opened together
    /// (a client fleet started together, or reconnecting after a rollout) are not all closed together.
    /// Default 0.1 (±10 %, as gRFC A9 and grpc-go/grpc-java). Range: 0 to 0.5.
    /// </summary>
    public double MaxConnectionAgeJitter { get; set; } = ServerConnectionAgeDefaults.MaxConnectionAgeJitter;

    /// <summary>
    /// Time calls may keep running after the graceful close started (by age or idleness) before the connection
    /// is aborted and those calls fail with <c>StatusCode.Unavailable</c>. Default
    /// <see cref="Timeout.InfiniteTimeSpan"/> (as grpc-go and grpc-java): a running call is never cut, and the
    /// old connection stays open until its last call ends. Long-running streams learn of the close through
    /// <see cref="IConnectionClosingFeature"/> and can end in time. Range: 0 to 24 hours, or infinite.
    /// </summary>
    public TimeSpan MaxConnectionAgeGrace { get; set; } = ServerConnectionAgeDefaults.MaxConnectionAgeGrace;

    /// <summary>
    /// Time a connection may stay open without any running call before it is closed gracefully; counted from
    /// the moment the connection opened or its last call ended. Default <see cref="Timeout.InfiniteTimeSpan"/>
    /// (off, as grpc-go and grpc-java). Needs <c>services.AddServerConnectionAge(...)</c>, which counts the
    /// calls of each connection. Range: 1 second to 24 hours, or infinite.
    /// </summary>
    public TimeSpan MaxConnectionIdle { get; set; } = ServerConnectionAgeDefaults.MaxConnectionIdle;

    /// <summary>Where each setting got its value (configuration key or code), for start-up errors; not bindable.</summary>
    internal Shared.SettingOrigins Origins { get; } = new(nameof(ServerConnectionAgeOptions));
}
