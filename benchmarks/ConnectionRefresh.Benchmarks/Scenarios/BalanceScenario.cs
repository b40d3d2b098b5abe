using ConnectionRefresh.Benchmarks.Infrastructure;
using ConnectionRefresh.Testing;

namespace ConnectionRefresh.Benchmarks.Scenarios;

internal sealed record BalanceRound(
    Strategy Strategy,
    int Round,
    long Calls,
    long Failures,
    IReadOnlyList<long> CallsPerPod,
    long ConnectionsOpened,
    double MaxToMean,
    int IdlePods,
    string? FirstError)
{
    public string Label => Strategy.Label();
}

/// <summary>
/// Balance quality: <c>clients</c> client replicas (each its own service provider, as separate pods would be)
/// calling a <see cref="SimulatedCluster"/> of <c>pods</c> pods through its per-connection random ClusterIP, for a
/// window of many connection ages. A fresh cluster per run; pods' call counters give the load. The per-call reference
/// is the Kubernetes resolver, watching a simulated API server that publishes the pods.
/// </summary>
internal static class BalanceScenario
{
    public static readonly Strategy[] Strategies =
    [
        Strategy.GrpcClientDefaults,
        Strategy.Refresh1,
        Strategy.Refresh4,
        Strategy.KubernetesResolver,
    ];

    public static async Task<IReadOnlyList<BalanceRound>> RunAsync(ScenarioSettings settings, Action<string> progress)
    {
        var results = new List<BalanceRound>();
        for (var round = 1; round <= settings.BalanceRounds; round++)
        {
            for (var s = 0; s < Strategies.Length; s++)
            {
                var strategy = Strategies[(s + round - 1) % Strategies.Length];
                var seed = settings.Seed + (round * 100) + (int)strategy;
                var result = await RunOneAsync(settings, strategy, round, seed).ConfigureAwait(false);
                progress($"balance round {round}/{settings.BalanceRounds} {strategy.Label(),-34} max/mean {result.MaxToMean:F2}  idle pods {result.IdlePods}  [{string.Join(' ', result.CallsPerPod)}]{(result.Failures > 0 ? $"  {result.Failures} failed: {result.FirstError}" : "")}");
                results.Add(result);
            }
        }

        return results;
    }

    private static async Task<BalanceRound> RunOneAsync(ScenarioSettings settings, Strategy strategy, int round, int seed)
    {
        GC.Collect();
        var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = settings.BalancePods, RandomSeed = seed }).ConfigureAwait(false);
        await using (cluster.ConfigureAwait(false))
        {
            var pods = cluster.Pods;
            var callsBefore = pods.Select(p => p.CallsServed).ToArray();
            var connectionsBefore = pods.Sum(p => p.ConnectionsAccepted);
            var clients = await ClusterClients.CreateAsync(strategy, cluster, settings.BalanceClients, thumbprint: null, settings.BalanceConnectionAge).ConfigureAwait(false);
            await using (clients.ConfigureAwait(false))
            {
                var load = await LoadLoop.RunAsync(clients.Replicas, settings.BalanceWorkersPerClient, settings.BalanceWindow, settings.MaxCalls, recordLatency: false).ConfigureAwait(false);
                var calls = pods.Select((p, i) => p.CallsServed - callsBefore[i]).ToArray();
                var mean = calls.Average();
                return new BalanceRound(
                    strategy,
                    round,
                    load.Calls,
                    load.Failures,
                    calls,
                    pods.Sum(p => p.ConnectionsAccepted) - connectionsBefore,
                    mean == 0 ? double.NaN : calls.Max() / mean,
                    calls.Count(c => c == 0),
                    load.FirstError);
            }
        }
    }
}
