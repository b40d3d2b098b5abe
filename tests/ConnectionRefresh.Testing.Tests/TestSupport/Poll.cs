using System.Diagnostics;

namespace ConnectionRefresh.Testing.Tests.TestSupport;

/// <summary>Waits for a condition by polling it, with a generous deadline; never a fixed sleep as synchronisation.</summary>
internal static class Poll
{
    /// <summary>
    /// Default deadline: far above anything these conditions need on an idle machine (milliseconds), so that a loaded
    /// 2-core machine running other builds and test suites at the same time does not fail them.
    /// </summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);

    public static async Task UntilAsync(Func<bool> condition, string what, TimeSpan? timeout = null)
    {
        var limit = timeout ?? DefaultTimeout;
        var watch = Stopwatch.StartNew();
        while (!condition())
        {
            if (watch.Elapsed > limit)
            {
                throw new TimeoutException($"Timed out after {limit.TotalSeconds:0.#} s waiting for: {what}");
            }

            await Task.Delay(10);
        }
    }
}
