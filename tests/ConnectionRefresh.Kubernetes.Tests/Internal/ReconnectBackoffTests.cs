using ConnectionRefresh.Kubernetes.Internal;

namespace ConnectionRefresh.Kubernetes.Tests.Internal;

public sealed class ReconnectBackoffTests
{
    [Fact]
    public void Next_NoJitter_DoublesUpToTheMaximum()
    {
        var backoff = new ReconnectBackoff(TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(10), () => 0.5);

        var delays = Enumerable.Range(0, 6).Select(_ => backoff.Next().TotalSeconds).ToArray();

        Assert.Equal([1, 2, 4, 8, 10, 10], delays);
    }

    [Fact]
    public void Next_RandomSource_JittersWithinTwentyPercentAndSpreads()
    {
        var random = new Random(42);
        var delays = Enumerable.Range(0, 200)
            .Select(_ => new ReconnectBackoff(TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(10), random.NextDouble))
            .Select(b => b.Next().TotalSeconds)
            .ToArray();

        Assert.All(delays, d => Assert.InRange(d, 0.8, 1.2));
        // 200 uniform draws: the chance that all land within 0.1 of each other is negligible (< 1e-100).
        Assert.True(delays.Max() - delays.Min() > 0.2, "clients that failed together must not retry together");
    }

    [Fact]
    public void Reset_AfterFailures_StartsAgainFromTheInitialDelay()
    {
        var backoff = new ReconnectBackoff(TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(10), () => 0.5);
        backoff.Next();
        backoff.Next();

        backoff.Reset();

        Assert.Equal(TimeSpan.FromSeconds(1), backoff.Next());
    }
}
