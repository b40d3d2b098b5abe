using System.Globalization;

namespace ConnectionRefresh.Benchmarks.Scenarios;

/// <summary>Command-line settings of the <c>scenarios</c> command; every load loop is bounded by them.</summary>
internal sealed record ScenarioSettings
{
    public int Rounds { get; init; } = 5;

    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(2);

    public TimeSpan Warmup { get; init; } = TimeSpan.FromSeconds(0.5);

    public int Concurrency { get; init; } = 8;

    /// <summary>Upper bound on calls per measured run (and on latency samples kept).</summary>
    public int MaxCalls { get; init; } = 2_000_000;

    public int BalanceRounds { get; init; } = 2;

    public TimeSpan BalanceWindow { get; init; } = TimeSpan.FromSeconds(15);

    public TimeSpan BalanceConnectionAge { get; init; } = TimeSpan.FromSeconds(1);

    public int BalanceClients { get; init; } = 2;

    public int BalancePods { get; init; } = 6;

    public int BalanceWorkersPerClient { get; init; } = 4;

    public int ClusterRounds { get; init; } = 3;

    public TimeSpan ClusterDuration { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Work per call on the simulated cluster's pods, in milliseconds (a wait that holds one of the pod's call slots).</summary>
    public int ClusterWorkMs { get; init; } = 5;

    /// <summary>Calls one pod of the simulated cluster runs at once, like its CPU limit; more wait in a queue.</summary>
    public int ClusterPodCapacity { get; init; } = 4;

    public int Seed { get; init; } = 20251127;

    /// <summary>Throughput strategies to run; the bare channel is always included (everything is compared with it).</summary>
    public IReadOnlyList<ConnectionRefresh.Benchmarks.Infrastructure.Strategy> Strategies { get; init; } = ThroughputScenario.Strategies;

    public bool SkipThroughput { get; init; }

    public bool SkipBalance { get; init; }

    public bool SkipCluster { get; init; }

    public string OutputDirectory { get; init; } = "";

    public static ScenarioSettings Parse(IReadOnlyList<string> args, string defaultOutput)
    {
        var settings = new ScenarioSettings { OutputDirectory = defaultOutput };
        for (var i = 0; i < args.Count; i++)
        {
            string Next() => i + 1 < args.Count ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
            double Seconds() => double.Parse(Next(), CultureInfo.InvariantCulture);
            int Int() => int.Parse(Next(), CultureInfo.InvariantCulture);
            settings = args[i] switch
            {
                "--out" => settings with { OutputDirectory = Path.GetFullPath(Next()) },
                "--rounds" => settings with { Rounds = Int() },
                "--seconds" => settings with { Duration = TimeSpan.FromSeconds(Seconds()) },
                "--warmup" => settings with { Warmup = TimeSpan.FromSeconds(Seconds()) },
                "--concurrency" => settings with { Concurrency = Int() },
                "--balance-rounds" => settings with { BalanceRounds = Int() },
                "--balance-window" => settings with { BalanceWindow = TimeSpan.FromSeconds(Seconds()) },
                "--balance-age" => settings with { BalanceConnectionAge = TimeSpan.FromSeconds(Seconds()) },
                "--cluster-rounds" => settings with { ClusterRounds = Int() },
                "--cluster-seconds" => settings with { ClusterDuration = TimeSpan.FromSeconds(Seconds()) },
                "--cluster-work-ms" => settings with { ClusterWorkMs = Int() },
                "--cluster-capacity" => settings with { ClusterPodCapacity = Int() },
                "--seed" => settings with { Seed = Int() },
                "--strategies" => settings with
                {
                    Strategies = [.. Next().Split(',').Select(Enum.Parse<ConnectionRefresh.Benchmarks.Infrastructure.Strategy>)
                        .Append(ConnectionRefresh.Benchmarks.Infrastructure.Strategy.BareChannel).Distinct()],
                },
                "--no-throughput" => settings with { SkipThroughput = true },
                "--no-balance" => settings with { SkipBalance = true },
                "--no-cluster" => settings with { SkipCluster = true },
                "--quick" => settings with
                {
                    Rounds = 1,
                    Duration = TimeSpan.FromSeconds(1),
                    BalanceRounds = 1,
                    BalanceWindow = TimeSpan.FromSeconds(10),
                    ClusterRounds = 1,
                    ClusterDuration = TimeSpan.FromSeconds(2),
                },
                _ => throw new ArgumentException($"Unknown option '{args[i]}'. See benchmarks/README.md."),
            };
        }

        if (settings.Rounds < 1 || settings.Concurrency < 1 || settings.BalanceRounds < 1 || settings.ClusterRounds < 1
            || settings.Duration <= TimeSpan.Zero || settings.BalanceWindow <= TimeSpan.Zero || settings.ClusterDuration <= TimeSpan.Zero
            || settings.BalanceConnectionAge < TimeSpan.FromSeconds(1))
        {
            throw new ArgumentException("Rounds and concurrency must be at least 1, durations positive, --balance-age at least 1 s.");
        }

        if (settings.Strategies.Contains(ConnectionRefresh.Benchmarks.Infrastructure.Strategy.KubernetesResolver))
        {
            throw new ArgumentException("--strategies: KubernetesResolver needs the simulated cluster; it always runs in the cluster and balance parts, not against the single server.");
        }

        if (settings.ClusterWorkMs is < 0 or > 1_000 || settings.ClusterPodCapacity is < 1 or > 10_000)
        {
            throw new ArgumentException($"--cluster-work-ms must be 0 to 1000 (was {settings.ClusterWorkMs}) and --cluster-capacity 1 to 10,000 (was {settings.ClusterPodCapacity}).");
        }

        return settings;
    }
}
