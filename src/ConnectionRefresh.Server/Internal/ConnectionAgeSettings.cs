using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace ConnectionRefresh.Server.Internal;

/// <summary>The validated settings one middleware applies to each of its connections. Immutable.</summary>
/// <param name="MaxAge">MaxConnectionAge.</param>
/// <param name="Jitter">MaxConnectionAgeJitter.</param>
/// <param name="Grace">MaxConnectionAgeGrace.</param>
/// <param name="MaxIdle">MaxConnectionIdle.</param>
/// <param name="CallsCounted">
/// Whether the calls of each connection are counted (<c>services.AddServerConnectionAge(...)</c> ran); then a
/// connection that reaches its age before its first call is closed when that call starts, not before.
/// </param>
/// <param name="EndpointProtocols">
/// The protocols of the endpoint (<c>ListenOptions.Protocols</c>); with TLS, ALPN decides per connection. Only
/// HTTP/2 connections linger after Kestrel ended them (see <see cref="LingeringTransport"/>).
/// </param>
internal sealed record ConnectionAgeSettings(
    TimeSpan MaxAge, double Jitter, TimeSpan Grace, TimeSpan MaxIdle, bool CallsCounted, HttpProtocols EndpointProtocols = HttpProtocols.Http2)
{
    public static ConnectionAgeSettings From(ServerConnectionAgeOptions options, bool callsCounted, HttpProtocols endpointProtocols = HttpProtocols.Http2) => new(
        options.MaxConnectionAge,
        options.MaxConnectionAgeJitter,
        options.MaxConnectionAgeGrace,
        options.MaxConnectionIdle,
        callsCounted,
        endpointProtocols);

    /// <summary>
    /// The age of one connection: <see cref="MaxAge"/> × (1 + j × u), u uniform in [−1, 1), as gRFC A9.
    /// </summary>
    public TimeSpan DrawAge(Random random)
    {
        if (MaxAge == Timeout.InfiniteTimeSpan || Jitter == 0)
        {
            return MaxAge;
        }

        var factor = 1 + (Jitter * ((2 * random.NextDouble()) - 1));
        return TimeSpan.FromTicks((long)(MaxAge.Ticks * factor));
    }
}
