using System.Diagnostics;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>Polls a condition until it holds or a deadline passes (no sleeping as synchronization).</summary>
internal static class Eventually
{
    public static async Task<TimeSpan> TrueAsync(Func<bool> condition, TimeSpan timeout, string because)
    {
        var watch = Stopwatch.StartNew();
        while (!condition())
        {
            if (watch.Elapsed > timeout)
            {
                throw new Xunit.Sdk.XunitException($"Timed out after {timeout}: {because}");
            }

            // Polling interval, not synchronization: the condition is re-checked until the deadline.
            await Task.Delay(10);
        }

        return watch.Elapsed;
    }

    public static async Task<TimeSpan> TrueAsync(Func<Task<bool>> condition, TimeSpan timeout, string because)
    {
        var watch = Stopwatch.StartNew();
        while (!await condition())
        {
            if (watch.Elapsed > timeout)
            {
                throw new Xunit.Sdk.XunitException($"Timed out after {timeout}: {because}");
            }

            await Task.Delay(10);
        }

        return watch.Elapsed;
    }
}
