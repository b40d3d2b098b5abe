using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using ConnectionRefresh.Testing;
using ScaleOutDemo;
using Spectre.Console;
using Spectre.Console.Rendering;

CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;

DemoOptions options;
try
{
    options = DemoOptions.Parse(args);
}
catch (ArgumentException ex)
{
    Console.Error.WriteLine(ex.Message);
    return 2;
}

if (options.ShowHelp)
{
    Console.WriteLine(DemoOptions.Help);
    return 0;
}

if (options.KubeProxy && !KubeProxySupport.IsIptablesSupported(out var reason))
{
    Console.Error.WriteLine($"--kube-proxy cannot run here: {reason}");
    return 2;
}

if (!AnsiConsole.Profile.Capabilities.Interactive)
{
    AnsiConsole.Profile.Width = Math.Max(AnsiConsole.Profile.Width, 200); // Logs and README captures: do not wrap the table.
}

// The demo opens many connections per second (per-call strategy); give the thread pool a head start on 2 cores.
ThreadPool.SetMinThreads(Math.Max(64, Environment.ProcessorCount * 8), Math.Max(64, Environment.ProcessorCount * 8));

var scenario = new Scenario(options.Duration);
AnsiConsole.MarkupLine($"[bold]ScaleOutDemo[/]: {options.Strategies.Count} strategies side by side, each against its own cluster " +
    $"({(options.KubeProxy ? "kube-proxy iptables mode" : "in-process ClusterIP")}), {options.Clients} client replicas × {options.WorkersPerClient} callers, " +
    $"{options.Pods} pods running {options.PodCapacity} calls at once each ({options.WorkMs} ms of work per call), {options.Duration.TotalSeconds:0} s.");
AnsiConsole.MarkupLine($"Script: scale {options.Pods} → {options.Pods * 2} at {scenario.ScaleOutAt.TotalSeconds:0} s, rolling update at {scenario.RollingUpdateAt.TotalSeconds:0} s, " +
    $"busiest pod black-holed at {scenario.BlackHoleAt.TotalSeconds:0} s, removed from endpoints at {scenario.EndpointRemovalAt.TotalSeconds:0} s.");

var runs = options.Strategies.Select(s => new StrategyRun(s, options, scenario)).ToList();
try
{
    await Task.WhenAll(runs.Select(r => r.StartClusterAsync()));
    var clock = Stopwatch.StartNew();
    var all = Task.WhenAll(runs.Select(r => r.RunAsync(clock)));

    if (AnsiConsole.Profile.Capabilities.Interactive)
    {
        await AnsiConsole.Live(LiveView(runs, clock, scenario)).AutoClear(false).StartAsync(async ctx =>
        {
            while (!all.IsCompleted)
            {
                await Task.WhenAny(all, Task.Delay(500));
                ctx.UpdateTarget(LiveView(runs, clock, scenario));
            }
        });
    }
    else
    {
        while (!all.IsCompleted)
        {
            await Task.WhenAny(all, Task.Delay(5000));
            Console.WriteLine($"  {clock.Elapsed.TotalSeconds,3:0} s  " + string.Join("  ", runs.Select(r => $"{r.Strategy.Name}: {r.Ok} ok / {r.Failed} failed")));
        }
    }

    await all;

    var results = runs.Select(StrategyResult.From).ToList();
    AnsiConsole.Write(ResultTable(results, options));
    foreach (var run in runs.Where(r => r.ScriptError is not null))
    {
        AnsiConsole.MarkupLineInterpolated($"[yellow]{run.Strategy.Name}: the script stopped early: {run.ScriptError!.Message}[/]");
    }

    Directory.CreateDirectory(options.OutputDirectory);
    var chartPath = Path.Combine(options.OutputDirectory, "chart.png");
    var jsonPath = Path.Combine(options.OutputDirectory, "results.json");
    Chart.Save(results, chartPath);
    var report = new DemoReport(
        "dotnet run --project examples/ScaleOutDemo -c Release" + (args.Length > 0 ? " -- " + string.Join(' ', args) : ""),
        DateTimeOffset.UtcNow,
        $"{RuntimeInformation.OSDescription}, {Environment.ProcessorCount} cores, {RuntimeInformation.FrameworkDescription}",
        options.Duration.TotalSeconds,
        options.Clients,
        options.WorkersPerClient,
        options.Pods,
        options.WorkMs,
        options.PodCapacity,
        options.KubeProxy ? "iptables" : "userspace",
        results);
    await File.WriteAllTextAsync(jsonPath, JsonSerializer.Serialize(report, new JsonSerializerOptions { WriteIndented = true }));
    AnsiConsole.MarkupLineInterpolated($"Wrote [bold]{chartPath}[/] and [bold]{jsonPath}[/].");
    return 0;
}
finally
{
    await Task.WhenAll(runs.Select(r => r.DisposeAsync().AsTask()));
}

static IRenderable LiveView(IReadOnlyList<StrategyRun> runs, Stopwatch clock, Scenario scenario)
{
    var elapsed = clock.Elapsed;
    var phase = elapsed < scenario.ScaleOutAt ? "steady"
        : elapsed < scenario.RollingUpdateAt ? "after scale-out"
        : elapsed < scenario.BlackHoleAt ? "rolling update"
        : elapsed < scenario.EndpointRemovalAt ? "pod black-holed"
        : "black-holed pod out of endpoints";
    var table = new Table().Border(TableBorder.Rounded)
        .Title($"{Math.Min(elapsed.TotalSeconds, scenario.Duration.TotalSeconds):0} / {scenario.Duration.TotalSeconds:0} s — {phase}")
        .AddColumn("strategy").AddColumn(new TableColumn("ok").RightAligned()).AddColumn(new TableColumn("failed").RightAligned())
        .AddColumn("calls in the last second, per ready pod");
    foreach (var run in runs)
    {
        var second = (int)run.Cluster.Elapsed().TotalSeconds - 1;
        var series = run.Cluster.Summary().Pods.ToDictionary(p => p.Name, p => p.CallsPerSecond);
        var pods = run.Cluster.Pods.Where(p => p.IsReady || p.IsBlackHoled).Select(p =>
            (p.Name, p.IsBlackHoled, Count: series.TryGetValue(p.Name, out var counts) && second >= 0 && second < counts.Count ? counts[second] : 0));
        var cells = string.Join("  ", pods.Select(p => $"{(p.IsBlackHoled ? "[red]" : "")}{Markup.Escape(p.Name.Replace("greeter-", "p", StringComparison.Ordinal))}:{p.Count,4}{(p.IsBlackHoled ? "[/]" : "")}"));
        table.AddRow(Markup.Escape(run.Strategy.Name), run.Ok.ToString(CultureInfo.InvariantCulture), run.Failed > 0 ? $"[red]{run.Failed}[/]" : "0", cells);
    }

    return table;
}

static Table ResultTable(IReadOnlyList<StrategyResult> results, DemoOptions options)
{
    var table = new Table().Border(TableBorder.Markdown)
        .AddColumn("strategy")
        .AddColumn(new TableColumn("calls/s").RightAligned())
        .AddColumn(new TableColumn("failed").RightAligned())
        .AddColumn(new TableColumn("p50 ms").RightAligned())
        .AddColumn(new TableColumn("p99 ms").RightAligned())
        .AddColumn(new TableColumn("conns").RightAligned())
        .AddColumn(new TableColumn("max/mean¹").RightAligned())
        .AddColumn(new TableColumn("new pods¹").RightAligned())
        .AddColumn(new TableColumn("1st call²").RightAligned())
        .AddColumn(new TableColumn("recovery³").RightAligned());
    foreach (var r in results)
    {
        table.AddRow(
            Markup.Escape(r.Name),
            $"{r.CallsPerSecond:0}",
            r.FailedCalls.ToString(CultureInfo.InvariantCulture),
            $"{r.P50Ms:0.0}",
            $"{r.P99Ms:0.0}",
            r.ConnectionsOpened.ToString(CultureInfo.InvariantCulture),
            $"{r.MaxToMeanLoadAfterScaleOut:0.00}",
            $"{r.NewPodShareAfterScaleOut:P0}",
            r.SlowestNewPodFirstCallSeconds is { } s ? $"{s:0.0} s" : $"never ({r.NewPodsNeverCalled}/{r.NewPods})",
            r.RecoverySeconds is { } rec ? $"{rec:0.0} s" : "never");
    }

    table.Caption(
        $"¹ between the scale-out ({options.Pods} → {options.Pods * 2}) and the rolling update: max/mean calls per pod (ideal 1.00) and the new pods' share of calls (ideal 50 %).\n" +
        "² until the slowest new pod served its first call.  ³ after the black-hole, until the last failed call (calls have a 2 s deadline); never = still failing at the end.");
    return table;
}
