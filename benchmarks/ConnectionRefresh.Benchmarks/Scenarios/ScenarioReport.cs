using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using ConnectionRefresh.Benchmarks.Infrastructure;
using Spectre.Console;

namespace ConnectionRefresh.Benchmarks.Scenarios;

/// <summary>What one <c>scenarios</c> run measured; a part that was skipped is empty.</summary>
internal sealed record ScenarioResults(IReadOnlyList<ThroughputResult> Throughput, IReadOnlyList<ThroughputResult> Cluster, IReadOnlyList<BalanceRound> Balance);

/// <summary>Writes the scenario results: console tables, <c>scenarios.json</c>, <c>scenarios.md</c> and PNG charts.</summary>
internal static class ScenarioReport
{
    private const string PairedFootnote = "¹ median over rounds of (calls/s ÷ the other strategy's calls/s in the same round).";

    private static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        Converters = { new JsonStringEnumConverter() },
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static void Print(ScenarioResults results)
    {
        var (throughput, cluster, balance) = results;
        if (throughput.Count > 0)
        {
            var table = new Table().Title("Unary calls/s, closed loop (median of rounds)")
                .AddColumns("transport", "strategy", "calls/s", "rounds", "vs bare", "paired vs bare", "paired vs per-call", "p50 µs", "p99 µs", "client CPU µs/call", "failed");
            foreach (var r in throughput)
            {
                var bareResult = throughput.Single(x => x.Transport == r.Transport && x.Strategy == Strategy.BareChannel);
                var bare = bareResult.CallsPerSecond;
                table.AddRow(
                    r.Transport,
                    Markup.Escape(r.Label),
                    N(r.CallsPerSecond),
                    string.Join(" / ", r.Rounds.Select(x => N(x.CallsPerSecond))),
                    (r.CallsPerSecond / bare).ToString("P0", CultureInfo.InvariantCulture),
                    r.PairedRatio(bareResult).ToString("P0", CultureInfo.InvariantCulture),
                    X(PairedToPerCall(throughput, r)),
                    N(r.P50Micros),
                    N(r.P99Micros),
                    r.CpuMicrosPerCall.ToString("0.0", CultureInfo.InvariantCulture),
                    r.Failures.ToString(CultureInfo.InvariantCulture));
            }

            AnsiConsole.Write(table);
        }

        if (cluster.Count > 0)
        {
            var table = new Table().Title("On the simulated cluster: unary calls/s (median of rounds)")
                .AddColumns("transport", "strategy", "calls/s", "rounds", "paired vs per-call dial", "paired vs AddGrpcClient", "p50 µs", "p99 µs", "max/mean pod load", "idle pods", "failed");
            foreach (var r in cluster)
            {
                table.AddRow(
                    r.Transport,
                    Markup.Escape(r.Label),
                    N(r.CallsPerSecond),
                    string.Join(" / ", r.Rounds.Select(x => N(x.CallsPerSecond))),
                    X(PairedToPerCall(cluster, r)),
                    X(PairedTo(cluster, r, Strategy.GrpcClientDefaults)),
                    N(r.P50Micros),
                    N(r.P99Micros),
                    r.MaxToMean.ToString("0.00", CultureInfo.InvariantCulture),
                    r.IdlePods.ToString(CultureInfo.InvariantCulture),
                    r.Failures.ToString(CultureInfo.InvariantCulture));
            }

            AnsiConsole.Write(table);
        }

        if (balance.Count > 0)
        {
            var table = new Table().Title("Balance: calls per pod over the window")
                .AddColumns("strategy", "round", "calls", "connections", "max/mean", "idle pods", "calls per pod");
            foreach (var r in balance.OrderBy(r => r.Strategy).ThenBy(r => r.Round))
            {
                table.AddRow(
                    Markup.Escape(r.Label),
                    r.Round.ToString(CultureInfo.InvariantCulture),
                    N(r.Calls),
                    N(r.ConnectionsOpened),
                    r.MaxToMean.ToString("0.00", CultureInfo.InvariantCulture),
                    r.IdlePods.ToString(CultureInfo.InvariantCulture),
                    string.Join(" ", r.CallsPerPod.Select(c => N(c))));
            }

            AnsiConsole.Write(table);
        }
    }

    public static string WriteJson(string directory, ScenarioSettings settings, MachineInfo machine, DateTimeOffset started, ScenarioResults results)
    {
        var (throughput, cluster, balance) = results;
        var path = Path.Combine(directory, "scenarios.json");
        var document = new
        {
            started,
            machine,
            settings = new
            {
                settings.Rounds,
                durationSeconds = settings.Duration.TotalSeconds,
                warmupSeconds = settings.Warmup.TotalSeconds,
                settings.Concurrency,
                settings.MaxCalls,
                settings.BalanceRounds,
                balanceWindowSeconds = settings.BalanceWindow.TotalSeconds,
                balanceConnectionAgeSeconds = settings.BalanceConnectionAge.TotalSeconds,
                settings.BalanceClients,
                settings.BalancePods,
                settings.BalanceWorkersPerClient,
                settings.ClusterRounds,
                clusterDurationSeconds = settings.ClusterDuration.TotalSeconds,
                settings.ClusterWorkMs,
                settings.ClusterPodCapacity,
                settings.Seed,
            },
            throughput = throughput.Select(r => new
            {
                transport = r.Transport,
                strategy = r.Strategy,
                label = r.Label,
                callsPerSecond = r.CallsPerSecond,
                p50Micros = r.P50Micros,
                p99Micros = r.P99Micros,
                cpuMicrosPerCall = r.CpuMicrosPerCall,
                pairedRatioToBare = r.PairedRatio(throughput.Single(x => x.Transport == r.Transport && x.Strategy == Strategy.BareChannel)),
                pairedRatioToPerCallDial = PairedToPerCall(throughput, r),
                failures = r.Failures,
                rounds = r.Rounds,
            }),
            cluster = cluster.Select(r => new
            {
                transport = r.Transport,
                strategy = r.Strategy,
                label = r.Label,
                callsPerSecond = r.CallsPerSecond,
                p50Micros = r.P50Micros,
                p99Micros = r.P99Micros,
                maxToMean = r.MaxToMean,
                idlePods = r.IdlePods,
                pairedRatioToPerCallDial = PairedToPerCall(cluster, r),
                pairedRatioToGrpcClientDefaults = PairedTo(cluster, r, Strategy.GrpcClientDefaults),
                failures = r.Failures,
                rounds = r.Rounds,
            }),
            balance = balance.Select(r => new
            {
                strategy = r.Strategy,
                label = r.Label,
                r.Round,
                r.Calls,
                r.Failures,
                r.ConnectionsOpened,
                r.MaxToMean,
                r.IdlePods,
                r.CallsPerPod,
                r.FirstError,
            }),
        };
        File.WriteAllText(path, JsonSerializer.Serialize(document, Json));
        return path;
    }

    /// <summary>The tables as Markdown (<c>scenarios.md</c>), for the READMEs.</summary>
    public static string WriteMarkdown(string directory, ScenarioSettings settings, MachineInfo machine, DateTimeOffset started, ScenarioResults results)
    {
        var (throughput, cluster, balance) = results;
        var path = Path.Combine(directory, "scenarios.md");
        var text = new System.Text.StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"Measured {started:yyyy-MM-dd HH:mm} UTC on {machine}.").AppendLine().AppendLine();
        if (throughput.Count > 0)
        {
            AppendTable(
                text,
                $"Throughput: {settings.Concurrency} concurrent unary calls, closed loop, {settings.Rounds} interleaved rounds × {settings.Duration.TotalSeconds:0.#} s per strategy and transport (median of rounds; p50/p99 are medians of the rounds' percentiles; client CPU is this process's CPU time per call, the server runs in another process).",
                ["transport", "strategy", "calls/s", "vs bare channel", "paired vs bare¹", "paired vs per-call dial¹", "p50 µs", "p99 µs", "client CPU µs/call", "CPU vs bare", "failed"],
                "llrrrrrrrrr",
                throughput.Select(r =>
                {
                    var bare = throughput.Single(x => x.Transport == r.Transport && x.Strategy == Strategy.BareChannel);
                    return new[]
                    {
                        r.Transport, r.Label, N(r.CallsPerSecond), P(r.CallsPerSecond / bare.CallsPerSecond), P(r.PairedRatio(bare)),
                        X(PairedToPerCall(throughput, r)), N(r.P50Micros), N(r.P99Micros), r.CpuMicrosPerCall.ToString("0.0", CultureInfo.InvariantCulture),
                        P(r.CpuMicrosPerCall / bare.CpuMicrosPerCall), r.Failures.ToString(CultureInfo.InvariantCulture),
                    };
                }),
                PairedFootnote);
        }

        if (cluster.Count > 0)
        {
            AppendTable(
                text,
                $"On the simulated cluster: {settings.BalanceClients} client replicas × {settings.Concurrency} concurrent unary calls, {settings.BalancePods} pods behind a per-connection random ClusterIP, each pod running at most {settings.ClusterPodCapacity} calls at once with {settings.ClusterWorkMs} ms of work per call (more wait in its queue), MaxConnectionAge {settings.BalanceConnectionAge.TotalSeconds:0.#} s; {settings.ClusterRounds} interleaved rounds × {settings.ClusterDuration.TotalSeconds:0.#} s, a fresh cluster per run (median of rounds).",
                ["transport", "strategy", "calls/s", "paired vs per-call dial¹", "paired vs AddGrpcClient¹", "p50 µs", "p99 µs", "max/mean pod load", "idle pods", "failed"],
                "llrrrrrrrr",
                cluster.Select(r => new[]
                {
                    r.Transport, r.Label, N(r.CallsPerSecond), X(PairedToPerCall(cluster, r)), X(PairedTo(cluster, r, Strategy.GrpcClientDefaults)),
                    N(r.P50Micros), N(r.P99Micros), r.MaxToMean.ToString("0.00", CultureInfo.InvariantCulture), r.IdlePods.ToString(CultureInfo.InvariantCulture),
                    r.Failures.ToString(CultureInfo.InvariantCulture),
                }),
                PairedFootnote);
        }

        if (balance.Count > 0)
        {
            AppendTable(
                text,
                $"Balance: {settings.BalanceClients} client replicas × {settings.BalancePods} pods behind a per-connection random ClusterIP, {settings.BalanceWorkersPerClient} concurrent calls per client, MaxConnectionAge {settings.BalanceConnectionAge.TotalSeconds:0.#} s, window {settings.BalanceWindow.TotalSeconds:0.#} s, {settings.BalanceRounds} rounds.",
                ["strategy", "round", "calls", "connections opened", "max/mean", "idle pods", "calls per pod"],
                "lrrrrrl",
                balance.OrderBy(r => r.Strategy).ThenBy(r => r.Round).Select(r => new[]
                {
                    r.Label, r.Round.ToString(CultureInfo.InvariantCulture), N(r.Calls), r.ConnectionsOpened.ToString(CultureInfo.InvariantCulture),
                    r.MaxToMean.ToString("0.00", CultureInfo.InvariantCulture), r.IdlePods.ToString(CultureInfo.InvariantCulture), string.Join(" ", r.CallsPerPod.Select(c => N(c))),
                }),
                footnote: null);
        }

        File.WriteAllText(path, text.ToString());
        return path;
    }

    /// <summary>Two small PNGs: calls/s per strategy (h2c and TLS), and the worst max/mean pod load per strategy.</summary>
    public static IReadOnlyList<string> WriteCharts(string directory, ScenarioResults results)
    {
        var (throughput, cluster, balance) = results;
        var written = new List<string>();
        if (throughput.Count > 0)
        {
            var path = Path.Combine(directory, "scenarios-throughput.png");
            ThroughputPlot(throughput, "Unary calls/s (higher is better)").SavePng(path, 720, 400);
            written.Add(path);
        }

        if (cluster.Count > 0)
        {
            var path = Path.Combine(directory, "scenarios-cluster.png");
            ThroughputPlot(cluster, "Unary calls/s on the simulated cluster (higher is better)").SavePng(path, 720, 400);
            written.Add(path);
        }

        if (balance.Count > 0)
        {
            var path = Path.Combine(directory, "scenarios-balance.png");
            BalancePlot(balance).SavePng(path, 720, 400);
            written.Add(path);
        }

        return written;
    }

    private static ScottPlot.Plot ThroughputPlot(IReadOnlyList<ThroughputResult> throughput, string title)
    {
        var plot = new ScottPlot.Plot();
        var strategies = throughput.Select(r => r.Strategy).Distinct().ToArray();
        var transports = throughput.Select(r => r.Transport).Distinct().ToArray();
        var palette = new[] { ScottPlot.Color.FromHex("#4C78A8"), ScottPlot.Color.FromHex("#F58518") };
        var bars = new List<ScottPlot.Bar>();
        for (var s = 0; s < strategies.Length; s++)
        {
            for (var t = 0; t < transports.Length; t++)
            {
                var value = throughput.Single(r => r.Strategy == strategies[s] && r.Transport == transports[t]).CallsPerSecond;
                bars.Add(new ScottPlot.Bar
                {
                    Position = (s * (transports.Length + 1)) + t,
                    Value = value,
                    FillColor = palette[t % palette.Length],
                    Label = N(value),
                });
            }
        }

        var barPlot = plot.Add.Bars(bars);
        barPlot.ValueLabelStyle.FontSize = 9;
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            [.. strategies.Select((_, s) => (s * (transports.Length + 1)) + ((transports.Length - 1) / 2.0))],
            [.. strategies.Select(ShortLabel)]);
        plot.Axes.Bottom.TickLabelStyle.FontSize = 10;
        plot.Axes.Margins(bottom: 0, top: 0.15);
        for (var t = 0; t < transports.Length; t++)
        {
            plot.Legend.ManualItems.Add(new ScottPlot.LegendItem { LabelText = transports[t], FillColor = palette[t % palette.Length] });
        }

        plot.Legend.Alignment = ScottPlot.Alignment.UpperLeft;
        plot.Title(title);
        plot.YLabel("calls/s");
        return plot;
    }

    private static ScottPlot.Plot BalancePlot(IReadOnlyList<BalanceRound> balance)
    {
        var plot = new ScottPlot.Plot();
        var strategies = balance.Select(r => r.Strategy).Distinct().Order().ToArray();
        var bars = strategies.Select((s, i) =>
        {
            var worst = balance.Where(r => r.Strategy == s).Max(r => r.MaxToMean);
            return new ScottPlot.Bar
            {
                Position = i,
                Value = worst,
                FillColor = worst <= 1.5 ? ScottPlot.Color.FromHex("#54A24B") : ScottPlot.Color.FromHex("#E45756"),
                Label = worst.ToString("0.00", CultureInfo.InvariantCulture),
            };
        }).ToList();
        plot.Add.Bars(bars);
        var target = plot.Add.HorizontalLine(1.5);
        target.LinePattern = ScottPlot.LinePattern.Dashed;
        target.Color = ScottPlot.Colors.Gray;
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            [.. strategies.Select((_, i) => (double)i)],
            [.. strategies.Select(ShortLabel)]);
        plot.Axes.Bottom.TickLabelStyle.FontSize = 10;
        plot.Axes.Margins(bottom: 0, top: 0.15);
        plot.Title("Max/mean pod load (worst round), 2 clients × 6 pods; dashed: 1.5");
        return plot;
    }

    private static double PairedToPerCall(IReadOnlyList<ThroughputResult> results, ThroughputResult result) =>
        PairedTo(results, result, Strategy.NewConnectionPerCall);

    /// <summary><paramref name="result"/>'s calls/s against <paramref name="other"/>'s on the same transport, paired by round; NaN if it did not run.</summary>
    private static double PairedTo(IReadOnlyList<ThroughputResult> results, ThroughputResult result, Strategy other) =>
        results.SingleOrDefault(x => x.Transport == result.Transport && x.Strategy == other) is { } baseline
            ? result.PairedRatio(baseline)
            : double.NaN;

    private static string ShortLabel(Strategy strategy) => strategy switch
    {
        Strategy.NewConnectionPerCall => "per-call dial",
        Strategy.BareChannel => "bare channel",
        Strategy.GrpcClientDefaults => "AddGrpcClient",
        Strategy.Refresh1 => "refresh K=1",
        Strategy.Refresh4 => "refresh K=4",
        Strategy.KubernetesResolver => "k8s resolver",
        _ => strategy.Label(),
    };

    /// <summary>
    /// One Markdown table: an introducing sentence, the columns, the rows, a footnote. <paramref name="align"/> has one
    /// letter per column: l for text, r for figures.
    /// </summary>
    private static void AppendTable(System.Text.StringBuilder text, string intro, string[] columns, string align, IEnumerable<string[]> rows, string? footnote)
    {
        text.AppendLine(intro).AppendLine();
        text.AppendLine("| " + string.Join(" | ", columns) + " |");
        text.AppendLine("|" + string.Join("|", align.Select(a => a == 'r' ? "---:" : "---")) + "|");
        foreach (var row in rows)
        {
            text.AppendLine("| " + string.Join(" | ", row) + " |");
        }

        text.AppendLine();
        if (footnote is not null)
        {
            text.AppendLine(footnote).AppendLine();
        }
    }

    private static string P(double ratio) => ratio.ToString("P0", CultureInfo.InvariantCulture);

    private static string X(double ratio) => double.IsNaN(ratio) ? "-" : ratio.ToString("0.0", CultureInfo.InvariantCulture) + "×";

    private static string N(double value) => double.IsNaN(value) ? "-" : value.ToString("N0", CultureInfo.InvariantCulture);
}
