namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// Jittered exponential backoff: initial × 2^attempt, capped at the maximum, times a random factor in
/// [1 − j, 1 + j] so that many clients that lost the API server together do not reconnect together.
/// Not thread-safe: owned by one resolver loop.
/// </summary>
internal sealed class ReconnectBackoff(TimeSpan initial, TimeSpan max, Func<double> random)
{
    private int _attempt;

    /// <summary>The number of failures since the last reset.</summary>
    public int Attempt => _attempt;

    /// <summary>The delay before the next attempt; advances the attempt counter.</summary>
    public TimeSpan Next()
    {
        var exponent = Math.Min(_attempt, 30);
        var baseTicks = Math.Min((double)max.Ticks, initial.Ticks * Math.Pow(2, exponent));
        _attempt++;
        return Jitter(TimeSpan.FromTicks((long)baseTicks), random);
    }

    /// <summary>Back to the initial delay, after a healthy watch.</summary>
    public void Reset() => _attempt = 0;

    /// <summary>Multiplies <paramref name="value"/> by a random factor in [1 − j, 1 + j].</summary>
    public static TimeSpan Jitter(TimeSpan value, Func<double> random)
    {
        var factor = 1 + (KubernetesResolverDefaults.JitterFraction * ((2 * random()) - 1));
        return TimeSpan.FromTicks((long)(value.Ticks * factor));
    }
}
