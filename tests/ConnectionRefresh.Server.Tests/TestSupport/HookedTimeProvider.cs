using Microsoft.Extensions.Time.Testing;

namespace ConnectionRefresh.Server.Tests.TestSupport;

/// <summary>
/// A <see cref="TimeProvider"/> over a <see cref="FakeTimeProvider"/> that can run a test's action when the next timer
/// is created, just before creating it: a deterministic way to let time pass (and timers fire) at the exact point where
/// the code under test creates a timer.
/// </summary>
internal sealed class HookedTimeProvider(FakeTimeProvider inner) : TimeProvider
{
    private Action? _beforeNextTimer;

    public override long TimestampFrequency => inner.TimestampFrequency;

    public override TimeZoneInfo LocalTimeZone => inner.LocalTimeZone;

    /// <summary>Runs <paramref name="action"/> once, when the next timer is created, before it is.</summary>
    public void BeforeNextTimer(Action action) => Volatile.Write(ref _beforeNextTimer, action);

    public override DateTimeOffset GetUtcNow() => inner.GetUtcNow();

    public override long GetTimestamp() => inner.GetTimestamp();

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        Interlocked.Exchange(ref _beforeNextTimer, null)?.Invoke();
        return inner.CreateTimer(callback, state, dueTime, period);
    }
}
