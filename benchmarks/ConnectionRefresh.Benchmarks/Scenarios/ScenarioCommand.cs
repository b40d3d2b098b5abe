using ConnectionRefresh.Benchmarks.Infrastructure;
using Spectre.Console;

namespace ConnectionRefresh.Benchmarks.Scenarios;

/// <summary>The <c>scenarios</c> command: throughput over h2c and TLS, then the same on the simulated cluster, then balance, then the report.</summary>
internal static class ScenarioCommand
{
    public static async Task<int> RunAsync(ScenarioSettings settings)
    {
        var machine = MachineInfo.Current();
        if (Console.IsOutputRedirected)
        {
            AnsiConsole.Profile.Width = 200;
        }

        var started = DateTimeOffset.UtcNow;
        AnsiConsole.MarkupLine($"[bold]ConnectionRefresh scenarios[/] on {Markup.Escape(machine.ToString())}");
        Directory.CreateDirectory(settings.OutputDirectory);
        void Progress(string line) => AnsiConsole.WriteLine(line);

        IReadOnlyList<ThroughputResult> throughput = [];
        if (!settings.SkipThroughput)
        {
            using var server = await ServerProcess.StartAsync().ConfigureAwait(false);
            Progress($"server process: h2c {server.H2c}, TLS {server.Tls}; {settings.Rounds} rounds × {ThroughputScenario.Strategies.Length} strategies × 2 transports × {settings.Duration.TotalSeconds:0.#} s, {settings.Concurrency} concurrent calls");
            throughput = await ThroughputScenario.RunAsync(settings, server, Progress).ConfigureAwait(false);
        }

        IReadOnlyList<ThroughputResult> cluster = [];
        if (!settings.SkipCluster)
        {
            Progress($"cluster: {settings.BalanceClients} clients × {settings.Concurrency} calls, {settings.BalancePods} pods of {settings.ClusterPodCapacity} calls at once, {settings.ClusterWorkMs} ms per call, MaxConnectionAge {settings.BalanceConnectionAge.TotalSeconds:0.#} s; {settings.ClusterRounds} rounds × {ClusterScenario.Strategies.Length} strategies × 2 transports × {settings.ClusterDuration.TotalSeconds:0.#} s");
            cluster = await ClusterScenario.RunAsync(settings, Progress).ConfigureAwait(false);
        }

        IReadOnlyList<BalanceRound> balance = [];
        if (!settings.SkipBalance)
        {
            Progress($"balance: {settings.BalanceClients} clients × {settings.BalancePods} pods, MaxConnectionAge {settings.BalanceConnectionAge.TotalSeconds:0.#} s, window {settings.BalanceWindow.TotalSeconds:0.#} s, {settings.BalanceRounds} rounds");
            balance = await BalanceScenario.RunAsync(settings, Progress).ConfigureAwait(false);
        }

        var results = new ScenarioResults(throughput, cluster, balance);
        ScenarioReport.Print(results);
        Progress($"wrote {ScenarioReport.WriteJson(settings.OutputDirectory, settings, machine, started, results)}");
        Progress($"wrote {ScenarioReport.WriteMarkdown(settings.OutputDirectory, settings, machine, started, results)}");
        foreach (var chart in ScenarioReport.WriteCharts(settings.OutputDirectory, results))
        {
            Progress($"wrote {chart}");
        }

        return 0;
    }
}
