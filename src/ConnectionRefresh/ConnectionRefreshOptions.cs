using System.Net.Http;
using ConnectionRefresh.Internal;

namespace ConnectionRefresh;

/// <summary>
/// How a client refreshes its HTTP/2 connections. Bound from the <c>ConnectionRefresh</c> configuration
/// section by default and named by the HTTP client name, so two clients can differ.
/// </summary>
/// <remarks>
/// Every setting is checked at start-up; a bad value fails with a message that names the setting,
/// the value and the allowed range. The settings are read once, when the client's handler is built (for a gRPC
/// client: once for the life of the application); later configuration changes (<c>reloadOnChange</c>) are not
/// applied. A setting that is off is written <c>-00:00:00.001</c> (<see cref="Timeout.InfiniteTimeSpan"/>) in configuration.
/// </remarks>
public sealed class ConnectionRefreshOptions
{
    /// <summary>
    /// Age after which a connection is retired: new calls go to a new connection (a new kube-proxy pick),
    /// calls already running finish on the old one. Default 2 minutes, the handler lifetime that
    /// Grpc.Net.ClientFactory uses, short enough to follow a scale-out within minutes and long enough that
    /// reconnecting costs nothing measurable. A connection that takes the place of one the server closed (GOAWAY) or
    /// that idled out gets a full age of its own. <see cref="Timeout.InfiniteTimeSpan"/> disables it.
    /// Range: 1 second to 24 hours, or infinite.
    /// </summary>
    public TimeSpan MaxConnectionAge { get; set; } = ConnectionRefreshDefaults.MaxConnectionAge;

    /// <summary>
    /// Fraction by which each connection's age is randomised: it is drawn uniformly from
    /// <c>MaxConnectionAge × [1 − j, 1 + j]</c>, so clients started together do not reconnect together.
    /// Default 0.1 (±10 %, as gRPC servers do). Range: 0 to 0.5.
    /// </summary>
    public double MaxConnectionAgeJitter { get; set; } = ConnectionRefreshDefaults.MaxConnectionAgeJitter;

    /// <summary>
    /// Number of calls after which a connection is retired; <see langword="null"/> (the default) means no limit.
    /// Useful when call rates vary a lot between clients. Counted per connection slot generation: calls over HTTP/1.1,
    /// or past the server's stream limit, can spread one budget over several TCP connections; a connection that takes the
    /// place of one the server closed gets a full budget, less the calls running when it opened. Range: 1 to 1,000,000,000.
    /// </summary>
    public int? MaxRequestsPerConnection { get; set; }

    /// <summary>
    /// Number of independent connections kept to the target; calls are spread over them round-robin, skipping to
    /// the next connection when it has fewer calls running (so a slow or silently dead pod gets few new calls). Each one
    /// is its own kube-proxy pick, so K connections reach up to K pods. Their first ages are staggered (the first
    /// connection of slot i lives (i + 1) / K of an age, and takes (i + 1) / K of <see cref="MaxRequestsPerConnection"/>,
    /// at least one call) so that they do not all reconnect together; after that each keeps its own jittered age and
    /// full request budget. Default 1. Range: 1 to 64.
    /// </summary>
    public int ConnectionsPerEndpoint { get; set; } = 1;

    /// <summary>
    /// Time without any frame from the server after which the client sends an HTTP/2 PING, to find dead
    /// connections (a node lost, a network partition). Retired connections that still carry calls keep being
    /// pinged. Default 5 minutes: grpc-go and grpc-java servers by default treat a ping sooner than 5 minutes
    /// after the previous one as abuse and close the connection with <c>too_many_pings</c>; against servers
    /// without that policy (Kestrel) or with a relaxed one, 15–30 seconds finds dead connections much sooner.
    /// <see cref="Timeout.InfiniteTimeSpan"/> disables pings. Range: 1 second to 24 hours, or infinite.
    /// </summary>
    public TimeSpan KeepAlivePingDelay { get; set; } = ConnectionRefreshDefaults.KeepAlivePingDelay;

    /// <summary>
    /// Time to wait for a PING acknowledgement before the connection is considered dead and aborted; its calls
    /// fail with <c>StatusCode.Unavailable</c>. Default 20 seconds (the SocketsHttpHandler default).
    /// Range: 1 second to 1 hour.
    /// </summary>
    public TimeSpan KeepAlivePingTimeout { get; set; } = ConnectionRefreshDefaults.KeepAlivePingTimeout;

    /// <summary>
    /// When pings are sent. Default <see cref="HttpKeepAlivePingPolicy.WithActiveRequests"/>: only while calls
    /// run, because grpc-go and grpc-java servers by default punish pings on a connection without calls.
    /// </summary>
    public HttpKeepAlivePingPolicy KeepAlivePingPolicy { get; set; } = HttpKeepAlivePingPolicy.WithActiveRequests;

    /// <summary>
    /// Time an unused connection stays open before it is closed. Default 1 minute (the SocketsHttpHandler
    /// default). <see cref="Timeout.InfiniteTimeSpan"/> keeps idle connections. Range: 1 second to 24 hours,
    /// or infinite.
    /// </summary>
    public TimeSpan PooledConnectionIdleTimeout { get; set; } = ConnectionRefreshDefaults.PooledConnectionIdleTimeout;

    /// <summary>
    /// Time allowed to open a TCP (and TLS) connection. Default 10 seconds; SocketsHttpHandler waits forever,
    /// which a black-holed ClusterIP turns into hung calls. Calls waiting for a connection that times out fail with
    /// <c>StatusCode.Unavailable</c>. Range: 100 milliseconds to 10 minutes, or infinite.
    /// </summary>
    public TimeSpan ConnectTimeout { get; set; } = ConnectionRefreshDefaults.ConnectTimeout;

    /// <summary>
    /// Longest time a retired connection may keep running calls before they are cut (they fail with
    /// <c>StatusCode.Unavailable</c>) and the connection is closed. Default <see cref="Timeout.InfiniteTimeSpan"/>:
    /// a running call is never cut; its connection stays open, and pinged, until the call ends.
    /// Range: 1 second to 24 hours, or infinite.
    /// </summary>
    public TimeSpan DrainTimeout { get; set; } = Timeout.InfiniteTimeSpan;

    /// <summary>Where each setting got its value (configuration key or code), for start-up errors; not bindable.</summary>
    internal Shared.SettingOrigins Origins { get; } = new(nameof(ConnectionRefreshOptions));
}
