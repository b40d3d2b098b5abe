using Microsoft.Extensions.Time.Testing;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>A FakeTimeProvider that counts timers, so a test knows a delay is armed before it advances time.</summary>
internal sealed class CountingTimeProvider : FakeTimeProvider
{
    private int _timers;

    public int TimersCreated => Volatile.Read(ref _timers);

    public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
    {
        var timer = base.CreateTimer(callback, state, dueTime, period);
        Interlocked.Increment(ref _timers);
        return timer;
    }
}
