using System.Diagnostics;
using ConnectionRefresh.Benchmarks.Infrastructure;
using ConnectionRefresh.Protos;

namespace ConnectionRefresh.Benchmarks.Scenarios;

/// <summary>Result of one closed-loop load run.</summary>
internal sealed record LoadResult(long Calls, long Failures, TimeSpan Elapsed, long[] LatencyTicks, string? FirstError)
{
    public double CallsPerSecond => Calls / Elapsed.TotalSeconds;
}

/// <summary>
/// Closed-loop load: <c>workers</c> loops per target, each making one unary call after the other, until the
/// duration has passed or the call budget is spent. Bounded in time (a hard deadline cancels stragglers) and count.
/// </summary>
internal static class LoadLoop
{
    private const int MaxFailures = 1_000;
    private static readonly HelloRequest Request = new() { Name = "bench" };

    /// <param name="request">What every call sends; by default a name only (the server answers at once).</param>
    public static async Task<LoadResult> RunAsync(
        IReadOnlyList<GreeterTarget> targets, int workersPerTarget, TimeSpan duration, int maxCalls, bool recordLatency, HelloRequest? request = null)
    {
        request ??= Request;
        var workers = targets.Count * workersPerTarget;
        var perWorker = Math.Max(1, maxCalls / workers);
        using var hardStop = new CancellationTokenSource(duration + TimeSpan.FromSeconds(30));
        var start = Stopwatch.GetTimestamp();
        var end = start + (long)(duration.TotalSeconds * Stopwatch.Frequency);
        var tasks = new Task<WorkerResult>[workers];
        for (var i = 0; i < workers; i++)
        {
            var target = targets[i % targets.Count];
            tasks[i] = Task.Run(() => WorkerAsync(target, request, end, perWorker, recordLatency, hardStop.Token));
        }

        var results = await Task.WhenAll(tasks).ConfigureAwait(false);
        var elapsed = Stopwatch.GetElapsedTime(start);
        var latencies = recordLatency ? results.SelectMany(r => r.Latencies.Take((int)r.Calls)).ToArray() : [];
        return new LoadResult(
            results.Sum(r => r.Calls),
            results.Sum(r => r.Failures),
            elapsed,
            latencies,
            results.Select(r => r.FirstError).FirstOrDefault(e => e is not null));
    }

    private static async Task<WorkerResult> WorkerAsync(GreeterTarget target, HelloRequest request, long end, int maxCalls, bool recordLatency, CancellationToken cancellationToken)
    {
        var latencies = recordLatency ? new long[maxCalls] : [];
        long calls = 0, failures = 0;
        string? firstError = null;
        while (calls < maxCalls && failures < MaxFailures && Stopwatch.GetTimestamp() < end && !cancellationToken.IsCancellationRequested)
        {
            var before = Stopwatch.GetTimestamp();
            try
            {
                await target.CallAsync(request, cancellationToken).ConfigureAwait(false);
                if (recordLatency)
                {
                    latencies[calls] = Stopwatch.GetTimestamp() - before;
                }

                calls++;
            }
            catch (Exception exception) when (exception is not OutOfMemoryException)
            {
                failures++;
                firstError ??= $"{exception.GetType().Name}: {exception.Message}";
            }
        }

        return new WorkerResult(calls, failures, latencies, firstError);
    }

    public static double Percentile(long[] sortedTicks, double percentile)
    {
        if (sortedTicks.Length == 0)
        {
            return double.NaN;
        }

        var index = Math.Clamp((int)Math.Ceiling(percentile / 100 * sortedTicks.Length) - 1, 0, sortedTicks.Length - 1);
        return sortedTicks[index] * 1_000_000.0 / Stopwatch.Frequency;
    }

    private sealed record WorkerResult(long Calls, long Failures, long[] Latencies, string? FirstError);
}
