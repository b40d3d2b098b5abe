using ConnectionRefresh.Testing;

namespace ScaleOutDemo;

internal sealed record PodSeries(string Name, double AddedAtSeconds, double? RemovedAtSeconds, double? FirstCallAtSeconds, long Calls, long Connections, long[] CallsPerSecond);

internal sealed record EventRecord(double AtSeconds, string Kind, string? Pod, string Description);

/// <summary>Every figure of one strategy's run (times in seconds since its cluster started).</summary>
internal sealed record StrategyResult(
    string Name,
    string Description,
    long Calls,
    double CallsPerSecond,
    long FailedCalls,
    double P50Ms,
    double P99Ms,
    long ConnectionsOpened,
    double MaxToMeanLoadAfterScaleOut,
    double NewPodShareAfterScaleOut,
    int NewPods,
    int NewPodsNeverCalled,
    double? SlowestNewPodFirstCallSeconds,
    string? BlackHoledPod,
    long FailedCallsAfterBlackHole,
    bool RecoveredAfterBlackHole,
    double? RecoverySeconds,
    double LoadStartedAtSeconds,
    double LoadEndedAtSeconds,
    long[] ClientOkPerSecond,
    long[] ClientFailedPerSecond,
    PodSeries[] Pods,
    EventRecord[] Events)
{
    public static StrategyResult From(StrategyRun run)
    {
        var summary = run.Cluster.Summary();
        var stats = run.Statistics();
        var events = summary.Events;
        var loadSeconds = Math.Max(0.001, (run.LoadEndedAt - run.LoadStartedAt).TotalSeconds);

        // Window "after scale-out": whole seconds from the scale-out until the rolling update starts.
        var scaleAt = events.FirstOrDefault(e => e.Kind == ClusterEventKind.Scaled)?.At ?? run.LoadEndedAt;
        var rollingAt = events.FirstOrDefault(e => e.Kind == ClusterEventKind.RollingUpdateStarted)?.At ?? run.LoadEndedAt;
        var from = (int)Math.Ceiling(scaleAt.TotalSeconds);
        var to = (int)Math.Floor(rollingAt.TotalSeconds);
        var windowPods = summary.Pods.Where(p => p.AddedAt < rollingAt).ToList();
        var newPods = windowPods.Where(p => p.AddedAt >= scaleAt).ToList();
        long InWindow(PodSummary p) => p.CallsPerSecond.Skip(from).Take(Math.Max(0, to - from)).Sum();
        var windowCalls = windowPods.Select(InWindow).ToList();
        var windowTotal = windowCalls.Sum();
        var maxToMean = windowTotal == 0 ? 0 : windowCalls.Max() / windowCalls.Average();
        var newShare = windowTotal == 0 ? 0 : newPods.Sum(InWindow) / (double)windowTotal;
        var calledNewPods = newPods.Where(p => p.TimeToFirstCall is not null).ToList();
        double? slowestFirstCall = newPods.Count > 0 && calledNewPods.Count == newPods.Count
            ? newPods.Max(p => p.TimeToFirstCall!.Value.TotalSeconds)
            : null;

        // Recovery: from the black-hole until the end of the last second with a failed call.
        var blackHole = events.FirstOrDefault(e => e.Kind == ClusterEventKind.PodBlackHoled);
        long failedAfter = 0;
        var recovered = true;
        double? recovery = null;
        if (blackHole is not null)
        {
            var start = (int)Math.Floor(blackHole.At.TotalSeconds);
            var lastFull = (int)Math.Floor(run.LoadEndedAt.TotalSeconds) - 1;
            var lastFail = -1;
            for (var s = start; s < stats.FailedPerSecond.Length; s++)
            {
                if (stats.FailedPerSecond[s] > 0)
                {
                    failedAfter += stats.FailedPerSecond[s];
                    lastFail = s;
                }
            }

            recovered = lastFail < lastFull;
            recovery = lastFail < 0 ? 0 : recovered ? Math.Max(0, lastFail + 1 - blackHole.At.TotalSeconds) : null;
        }

        var latencies = stats.LatenciesMs.Order().ToArray();
        return new StrategyResult(
            run.Strategy.Name,
            run.Strategy.Description,
            run.Ok,
            run.Ok / loadSeconds,
            run.Failed,
            Percentile(latencies, 0.50),
            Percentile(latencies, 0.99),
            summary.Pods.Sum(p => p.ConnectionsAccepted),
            maxToMean,
            newShare,
            newPods.Count,
            newPods.Count - calledNewPods.Count,
            slowestFirstCall,
            run.BlackHoledPod,
            failedAfter,
            recovered,
            recovery,
            run.LoadStartedAt.TotalSeconds,
            run.LoadEndedAt.TotalSeconds,
            stats.OkPerSecond,
            stats.FailedPerSecond,
            [.. summary.Pods.Select(p => new PodSeries(p.Name, p.AddedAt.TotalSeconds, p.RemovedAt?.TotalSeconds, p.FirstCallAt?.TotalSeconds, p.CallsServed, p.ConnectionsAccepted, [.. p.CallsPerSecond]))],
            [.. events.Select(e => new EventRecord(e.At.TotalSeconds, e.Kind.ToString(), e.Pod, e.Description))]);
    }

    private static double Percentile(float[] sorted, double p) =>
        sorted.Length == 0 ? double.NaN : sorted[Math.Clamp((int)Math.Ceiling(p * sorted.Length) - 1, 0, sorted.Length - 1)];
}

/// <summary>The whole JSON file.</summary>
internal sealed record DemoReport(
    string Command,
    DateTimeOffset StartedAt,
    string Machine,
    double DurationSeconds,
    int Clients,
    int WorkersPerClient,
    int InitialPods,
    int WorkMs,
    int PodCapacity,
    string ProxyMode,
    IReadOnlyList<StrategyResult> Strategies);
