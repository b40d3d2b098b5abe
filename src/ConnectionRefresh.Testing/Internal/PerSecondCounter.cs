namespace ConnectionRefresh.Testing.Internal;

/// <summary>Counts events per whole second. Thread-safe: one lock around a growing list.</summary>
internal sealed class PerSecondCounter
{
    private const int MaxSeconds = 24 * 3600;
    private readonly Lock _gate = new();
    private readonly List<long> _counts = [];

    public void Increment(int second)
    {
        second = Math.Min(second, MaxSeconds);
        lock (_gate)
        {
            while (_counts.Count <= second)
            {
                _counts.Add(0);
            }

            _counts[second]++;
        }
    }

    public long[] Snapshot()
    {
        lock (_gate)
        {
            return [.. _counts];
        }
    }
}
