using System.Diagnostics.Metrics;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// Used when the application registered no <see cref="IMeterFactory"/> (no <c>AddMetrics()</c>, e.g. a
/// bare ServiceCollection). Thread-safe: guarded by a lock.
/// </summary>
internal sealed class FallbackMeterFactory : IMeterFactory
{
    private readonly List<Meter> _meters = [];
    private readonly Lock _lock = new();

    public Meter Create(MeterOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var meter = new Meter(options.Name, options.Version, options.Tags, this);
        lock (_lock)
        {
            _meters.Add(meter);
        }

        return meter;
    }

    public void Dispose()
    {
        lock (_lock)
        {
            foreach (var meter in _meters)
            {
                meter.Dispose();
            }

            _meters.Clear();
        }
    }
}
