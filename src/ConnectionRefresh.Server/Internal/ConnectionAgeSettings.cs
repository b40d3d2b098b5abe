namespace ConnectionRefresh.Server.Internal;

/// <summary>The validated settings one middleware applies to each of its connections. Immutable.</summary>
internal sealed record ConnectionAgeSettings(TimeSpan MaxAge, double Jitter, TimeSpan Grace, TimeSpan MaxIdle)
{
    public static ConnectionAgeSettings From(ServerConnectionAgeOptions options) => new(
        options.MaxConnectionAge,
        options.MaxConnectionAgeJitter,
        options.MaxConnectionAgeGrace,
        options.MaxConnectionIdle);

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
