using System.Security.Cryptography.X509Certificates;
using ConnectionRefresh.Benchmarks.Infrastructure;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Microsoft.AspNetCore.Hosting;

namespace ConnectionRefresh.Benchmarks.Scenarios;

/// <summary>
/// Calls/s and latency of each strategy on the simulated cluster that the balance scenario uses, over h2c and TLS:
/// client replicas calling <c>pods</c> pods through the per-connection random ClusterIP. The pods behave like pods
/// with a CPU limit: each runs at most <see cref="ScenarioSettings.ClusterPodCapacity"/> calls at once, each call
/// takes <see cref="ScenarioSettings.ClusterWorkMs"/> of work (a wait, so the machine's own CPU stays free for the
/// clients), further calls queue. So a strategy's calls/s depends on how many pods its connections reach, not only
/// on what a call costs. The per-call reference is the Kubernetes resolver over a simulated API server. Interleaved
/// like the throughput scenario; a fresh cluster per run.
/// </summary>
/// <remarks>
/// The ClusterIP and the pods run in this process, so client CPU is not measured here; the throughput scenario
/// measures it against an out-of-process server.
/// </remarks>
internal static class ClusterScenario
{
    public static readonly Strategy[] Strategies =
    [
        Strategy.NewConnectionPerCall,
        Strategy.GrpcClientDefaults,
        Strategy.Refresh1,
        Strategy.Refresh4,
        Strategy.KubernetesResolver,
    ];

    public static async Task<IReadOnlyList<ThroughputResult>> RunAsync(ScenarioSettings settings, Action<string> progress)
    {
        using var certificate = BenchServer.CreateCertificate();
        var transports = new[] { ("h2c", (X509Certificate2?)null), ("TLS", certificate) };
        var rounds = new Dictionary<(string, Strategy), List<ThroughputRound>>();
        for (var round = 1; round <= settings.ClusterRounds; round++)
        {
            for (var t = 0; t < transports.Length; t++)
            {
                var (transport, tls) = transports[t];
                for (var s = 0; s < Strategies.Length; s++)
                {
                    var strategy = Strategies[(s + round - 1 + t) % Strategies.Length];
                    var seed = settings.Seed + (round * 100) + (t * 10) + (int)strategy;
                    var result = await RunOneAsync(settings, strategy, tls, seed).ConfigureAwait(false);
                    progress($"cluster round {round}/{settings.ClusterRounds} {transport,-3} {strategy.Label(),-34} {result.CallsPerSecond,8:N0} calls/s  p99 {result.P99Micros,8:N0} µs  max/mean {result.Pods!.MaxToMean:F2}  [{string.Join(' ', result.Pods.CallsPerPod)}]{(result.Failures > 0 ? $"  {result.Failures} failed: {result.FirstError}" : "")}");
                    var key = (transport, strategy);
                    if (!rounds.TryGetValue(key, out var list))
                    {
                        rounds[key] = list = [];
                    }

                    list.Add(result with { Round = round });
                }
            }
        }

        return [.. transports.SelectMany(t => Strategies.Select(s => new ThroughputResult(t.Item1, s, rounds[(t.Item1, s)])))];
    }

    private static async Task<ThroughputRound> RunOneAsync(ScenarioSettings settings, Strategy strategy, X509Certificate2? tls, int seed)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var options = new SimulatedClusterOptions
        {
            Replicas = settings.BalancePods,
            RandomSeed = seed,
            MaxConcurrentCallsPerPod = settings.ClusterPodCapacity,
            ConfigureListen = tls is null ? null : listen => listen.UseHttps(tls),
        };
        var cluster = await SimulatedCluster.StartAsync(options).ConfigureAwait(false);
        await using (cluster.ConfigureAwait(false))
        {
            var clients = await ClusterClients.CreateAsync(strategy, cluster, settings.BalanceClients, tls?.Thumbprint, settings.BalanceConnectionAge).ConfigureAwait(false);
            await using (clients.ConfigureAwait(false))
            {
                var request = new HelloRequest { Name = "bench", DelayMs = settings.ClusterWorkMs };
                await LoadLoop.RunAsync(clients.Replicas, settings.Concurrency, settings.Warmup, settings.MaxCalls, recordLatency: false, request).ConfigureAwait(false);
                var before = cluster.Pods.Select(p => p.CallsServed).ToArray();
                var load = await LoadLoop.RunAsync(clients.Replicas, settings.Concurrency, settings.ClusterDuration, settings.MaxCalls, recordLatency: true, request).ConfigureAwait(false);
                var pods = new PodLoad([.. cluster.Pods.Select((p, i) => p.CallsServed - before[i])]);
                Array.Sort(load.LatencyTicks);
                return new ThroughputRound(0, load.CallsPerSecond, load.Calls, load.Failures,
                    LoadLoop.Percentile(load.LatencyTicks, 50), LoadLoop.Percentile(load.LatencyTicks, 99),
                    CpuMicrosPerCall: double.NaN, load.FirstError, pods);
            }
        }
    }
}
