using Microsoft.Extensions.Time.Testing;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>
/// A fake clock whose wall clock (<see cref="GetUtcNow"/>) can be stepped, as NTP or a VM resume steps a node's clock,
/// while its timestamps and timers stay monotonic, as the system's do. Counts timers like <see cref="CountingTimeProvider"/>.
/// </summary>
internal sealed class SteppedClockTimeProvider : FakeTimeProvider
{
    private long _offsetTicks;
    private int _timers;

    public int TimersCreated => Volatile.Read(ref _timers);

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;

    /// <summary>Moves the wall clock only (negative: back).</summary>
    public void StepWallClock(TimeSpan step) => Interlocked.Add(ref _offsetTicks, step.Ticks);

    public override DateTimeOffset GetUtcNow() => base.GetUtcNow().AddTicks(Interlocked.Read(ref _offsetTicks));

    public override long GetTimestamp() => base.GetUtcNow().UtcTicks;

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = base.CreateTimer(callback, state, dueTime, period);
        Interlocked.Increment(ref _timers);
        return timer;
    }
}
