using ConnectionRefresh.Benchmarks.Infrastructure;

namespace ConnectionRefresh.Benchmarks.Scenarios;

/// <param name="CpuMicrosPerCall">CPU time of this (client) process per call: what a call costs the caller, much less
/// disturbed by other work on the machine than calls/s. NaN on the simulated cluster, whose pods run in this process.</param>
/// <param name="Pods">On the simulated cluster: how the calls spread over the pods.</param>
internal sealed record ThroughputRound(int Round, double CallsPerSecond, long Calls, long Failures, double P50Micros, double P99Micros, double CpuMicrosPerCall, string? FirstError, PodLoad? Pods = null);

/// <summary>Calls each pod served in a run, and what that means: busiest pod against the mean, pods that got none.</summary>
internal sealed record PodLoad(IReadOnlyList<long> CallsPerPod)
{
    public double MaxToMean => CallsPerPod.Count == 0 || CallsPerPod.Sum() == 0 ? double.NaN : CallsPerPod.Max() / CallsPerPod.Average();

    public int IdlePods => CallsPerPod.Count(c => c == 0);
}

internal sealed record ThroughputResult(string Transport, Strategy Strategy, IReadOnlyList<ThroughputRound> Rounds)
{
    public string Label => Strategy.Label();

    /// <summary>Median over rounds: robust to one round disturbed by other work on the machine.</summary>
    public double CallsPerSecond => Median(Rounds.Select(r => r.CallsPerSecond));

    public double P50Micros => Median(Rounds.Select(r => r.P50Micros));

    public double P99Micros => Median(Rounds.Select(r => r.P99Micros));

    public double CpuMicrosPerCall => Median(Rounds.Select(r => r.CpuMicrosPerCall));

    /// <summary>On the simulated cluster: median over rounds of the busiest pod's load against the mean.</summary>
    public double MaxToMean => Median(Rounds.Select(r => r.Pods?.MaxToMean ?? double.NaN));

    /// <summary>On the simulated cluster: the most pods that got no call in one round.</summary>
    public int IdlePods => Rounds.Max(r => r.Pods?.IdlePods ?? 0);

    public long Failures => Rounds.Sum(r => r.Failures);

    /// <summary>
    /// Median over rounds of this strategy's calls/s divided by <paramref name="baseline"/>'s in the same round: pairs
    /// runs made seconds apart, so that slow phases of the machine cancel out.
    /// </summary>
    public double PairedRatio(ThroughputResult baseline) => Median(Rounds.Select(r =>
        r.CallsPerSecond / baseline.Rounds.Single(b => b.Round == r.Round).CallsPerSecond));

    public static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length == 0 ? double.NaN
            : sorted.Length % 2 == 1 ? sorted[sorted.Length / 2]
            : (sorted[(sorted.Length / 2) - 1] + sorted[sorted.Length / 2]) / 2;
    }
}

/// <summary>
/// Calls per second and latency of each strategy over h2c and TLS against the out-of-process server, interleaved:
/// every round runs every (transport, strategy) once, in an order rotated from round to round, so that slow
/// phases of a noisy machine spread over all strategies instead of hitting one.
/// </summary>
internal static class ThroughputScenario
{
    public static readonly Strategy[] Strategies =
    [
        Strategy.NewConnectionPerCall,
        Strategy.BareChannel,
        Strategy.GrpcClientDefaults,
        Strategy.Refresh1,
        Strategy.Refresh4,
    ];

    public static async Task<IReadOnlyList<ThroughputResult>> RunAsync(ScenarioSettings settings, ServerProcess server, Action<string> progress)
    {
        var transports = new (string Name, Uri Address, string? Thumbprint)[]
        {
            ("h2c", server.H2c, null),
            ("TLS", server.Tls, server.Thumbprint),
        };
        var strategies = settings.Strategies;
        var rounds = new Dictionary<(string, Strategy), List<ThroughputRound>>();
        for (var round = 1; round <= settings.Rounds; round++)
        {
            for (var t = 0; t < transports.Length; t++)
            {
                var transport = transports[t];
                for (var s = 0; s < strategies.Count; s++)
                {
                    var strategy = strategies[(s + round - 1 + t) % strategies.Count];
                    var result = await RunOneAsync(settings, strategy, transport.Address, transport.Thumbprint).ConfigureAwait(false);
                    progress($"round {round}/{settings.Rounds} {transport.Name,-3} {strategy.Label(),-28} {result.CallsPerSecond,10:N0} calls/s  p99 {result.P99Micros,8:N0} µs  CPU {result.CpuMicrosPerCall,6:N1} µs/call{(result.Failures > 0 ? $"  {result.Failures} failed: {result.FirstError}" : "")}");
                    var key = (transport.Name, strategy);
                    if (!rounds.TryGetValue(key, out var list))
                    {
                        rounds[key] = list = [];
                    }

                    list.Add(result with { Round = round });
                }
            }
        }

        return [.. transports.SelectMany(t => strategies.Select(s => new ThroughputResult(t.Name, s, rounds[(t.Name, s)])))];
    }

    /// <summary>CPU time this (client) process has used so far.</summary>
    public static TimeSpan ClientCpuTime()
    {
        using var process = System.Diagnostics.Process.GetCurrentProcess();
        return process.TotalProcessorTime;
    }

    private static async Task<ThroughputRound> RunOneAsync(ScenarioSettings settings, Strategy strategy, Uri address, string? thumbprint)
    {
        // Start every run from the same state: garbage of the previous strategy collected.
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var target = GreeterTarget.Create(strategy, address, thumbprint);
        await using (target.ConfigureAwait(false))
        {
            // Warm-up: connections opened, JIT done, pools filled; not measured.
            await LoadLoop.RunAsync([target], settings.Concurrency, settings.Warmup, settings.MaxCalls, recordLatency: false).ConfigureAwait(false);
            var cpuBefore = ClientCpuTime();
            var load = await LoadLoop.RunAsync([target], settings.Concurrency, settings.Duration, settings.MaxCalls, recordLatency: true).ConfigureAwait(false);
            var cpu = ClientCpuTime() - cpuBefore;
            Array.Sort(load.LatencyTicks);
            return new ThroughputRound(0, load.CallsPerSecond, load.Calls, load.Failures,
                LoadLoop.Percentile(load.LatencyTicks, 50), LoadLoop.Percentile(load.LatencyTicks, 99),
                load.Calls == 0 ? double.NaN : cpu.TotalMicroseconds / load.Calls, load.FirstError);
        }
    }
}
