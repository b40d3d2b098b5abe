using System.Diagnostics;

namespace ConnectionRefresh.TestSupport;

/// <summary>
/// Waits for a condition by polling it, with a generous deadline (shared by every test project): CI and developers run on
/// loaded 2-core machines, so anything that is merely "soon" may take seconds. The wait between checks is a poll interval,
/// never the synchronisation itself.
/// </summary>
internal static class Poll
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Polls <paramref name="condition"/> every ~10 ms until it holds; a <see cref="TimeoutException"/> naming
    /// <paramref name="what"/> once <paramref name="timeout"/> (default <see cref="DefaultTimeout"/>) has passed.
    /// </summary>
    /// <returns>How long it took the condition to hold, for tests that bound a latency.</returns>
    public static Task<TimeSpan> UntilAsync(Func<bool> condition, string what, TimeSpan? timeout = null) =>
        UntilAsync(() => Task.FromResult(condition()), what, timeout);

    /// <summary>The same for a condition that has to await something (a call, a read) to be checked.</summary>
    public static async Task<TimeSpan> UntilAsync(Func<Task<bool>> condition, string what, TimeSpan? timeout = null)
    {
        var stopwatch = Stopwatch.StartNew();
        var limit = timeout ?? DefaultTimeout;
        while (!await condition())
        {
            if (stopwatch.Elapsed > limit)
            {
                throw new TimeoutException($"Timed out after {limit} waiting until {what}.");
            }

            await Task.Delay(10);
        }

        return stopwatch.Elapsed;
    }

    /// <summary>Awaits <paramref name="task"/> with a deadline.</summary>
    public static async Task<T> WithTimeout<T>(Task<T> task, string what, TimeSpan? timeout = null)
    {
        try
        {
            return await task.WaitAsync(timeout ?? DefaultTimeout);
        }
        catch (TimeoutException ex)
        {
            throw new TimeoutException($"Timed out waiting for {what}.", ex);
        }
    }

    public static async Task WithTimeout(Task task, string what, TimeSpan? timeout = null)
    {
        try
        {
            await task.WaitAsync(timeout ?? DefaultTimeout);
        }
        catch (TimeoutException ex)
        {
            throw new TimeoutException($"Timed out waiting for {what}.", ex);
        }
    }
}
