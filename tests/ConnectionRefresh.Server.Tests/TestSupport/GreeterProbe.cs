namespace ConnectionRefresh.Server.Tests.TestSupport;

/// <summary>What the test Greeter service saw, for assertions; thread-safe (interlocked counters, TCS).</summary>
internal sealed class GreeterProbe
{
    private long _calls;

    public string Instance { get; init; } = "pod-0";

    public long Calls => Interlocked.Read(ref _calls);

    /// <summary>Completes (with the call's sequence) when a streaming call saw its connection's closing token fire.</summary>
    public TaskCompletionSource<int> ClosingObserved { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>The feature's grace period when the closing token fired (set before <see cref="ClosingObserved"/>).</summary>
    public TimeSpan? GracePeriodAtClosing { get; set; }

    /// <summary>Set when a call found no <see cref="IConnectionClosingFeature"/> on its connection.</summary>
    public bool FeatureMissing { get; set; }

    public void CallServed() => Interlocked.Increment(ref _calls);
}
