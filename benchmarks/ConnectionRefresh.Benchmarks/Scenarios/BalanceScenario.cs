using ConnectionRefresh.Benchmarks.Infrastructure;
using ConnectionRefresh.Testing;

namespace ConnectionRefresh.Benchmarks.Scenarios;

internal enum BalanceStrategy
{
    GrpcClientDefaults,
    Refresh1,
    Refresh4,

    /// <summary>
    /// The reference: grpc-dotnet's round_robin over the pod addresses themselves, which is what
    /// ConnectionRefresh.Kubernetes (an EndpointSlice resolver) gives: per-call balancing.
    /// </summary>
    PerCallRoundRobin,
}

internal sealed record BalanceRound(
    BalanceStrategy Strategy,
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

internal static class BalanceStrategyNames
{
    public static string Label(this BalanceStrategy strategy) => strategy switch
    {
        BalanceStrategy.GrpcClientDefaults => "AddGrpcClient defaults",
        BalanceStrategy.Refresh1 => "AddConnectionRefresh K=1",
        BalanceStrategy.Refresh4 => "AddConnectionRefresh K=4",
        BalanceStrategy.PerCallRoundRobin => "per-call round_robin (reference)",
        _ => strategy.ToString(),
    };
}

/// <summary>
/// Balance quality: <c>clients</c> client replicas (each its own service provider, as separate pods would be)
/// calling a <see cref="SimulatedCluster"/> of <c>pods</c> pods through its per-connection random ClusterIP, for a
/// window of many connection ages. A fresh cluster per run; pods' call counters give the load.
/// </summary>
internal static class BalanceScenario
{
    public static readonly BalanceStrategy[] Strategies =
    [
        BalanceStrategy.GrpcClientDefaults,
        BalanceStrategy.Refresh1,
        BalanceStrategy.Refresh4,
        BalanceStrategy.PerCallRoundRobin,
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

    private static async Task<BalanceRound> RunOneAsync(ScenarioSettings settings, BalanceStrategy strategy, int round, int seed)
    {
        GC.Collect();
        var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = settings.BalancePods, RandomSeed = seed }).ConfigureAwait(false);
        await using (cluster.ConfigureAwait(false))
        {
            var pods = cluster.Pods;
            var callsBefore = pods.Select(p => p.CallsServed).ToArray();
            var connectionsBefore = pods.Sum(p => p.ConnectionsAccepted);
            var clients = Enumerable.Range(0, settings.BalanceClients).Select(_ => CreateClient(strategy, cluster, settings)).ToArray();
            try
            {
                var load = await LoadLoop.RunAsync(clients, settings.BalanceWorkersPerClient, settings.BalanceWindow, settings.MaxCalls, recordLatency: false).ConfigureAwait(false);
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
            finally
            {
                foreach (var client in clients)
                {
                    await client.DisposeAsync().ConfigureAwait(false);
                }
            }
        }
    }

    private static GreeterTarget CreateClient(BalanceStrategy strategy, SimulatedCluster cluster, ScenarioSettings settings)
    {
        void Age(ConnectionRefreshOptions options) => options.MaxConnectionAge = settings.BalanceConnectionAge;
        return strategy switch
        {
            BalanceStrategy.GrpcClientDefaults => GreeterTarget.Create(Strategy.GrpcClientDefaults, cluster.Address, null),
            BalanceStrategy.Refresh1 => GreeterTarget.Create(Strategy.Refresh1, cluster.Address, null, Age),
            BalanceStrategy.Refresh4 => GreeterTarget.Create(Strategy.Refresh4, cluster.Address, null, Age),
            BalanceStrategy.PerCallRoundRobin => GreeterTarget.PodRoundRobin(cluster.Pods.Select(p => p.Address), thumbprint: null),
            _ => throw new ArgumentOutOfRangeException(nameof(strategy)),
        };
    }
}
