using BenchmarkDotNet.Running;
using ConnectionRefresh.Benchmarks.Infrastructure;
using ConnectionRefresh.Benchmarks.Micro;
using ConnectionRefresh.Benchmarks.Scenarios;

// Commands (see benchmarks/README.md):
//   (none) | micro [--full] [BenchmarkDotNet options]   the BenchmarkDotNet micro benchmark of one unary call
//   scenarios [--quick] [--out dir] [...]               throughput h2c/TLS and balance, table + JSON + PNG
//   ab [--seconds S] [--strategies A,B] [...]          paired calls/s against the bare channel, alternated in short slices
//   serverab [--seconds S] [--servers A,B] [...]       the same pairing for ConnectionRefresh.Server: plain Kestrel against the package
//   podexits [--mode M] [--seconds S] [...]           calls lost at pod exits, with and without ConnectionRefresh.Server on the pods
//   alloc [calls]                                       quick allocated-bytes-per-call check of each strategy
//   server [--setup plain|package|...]                  the loopback benchmark server (started by the others)
var command = args.Length > 0 && !args[0].StartsWith('-') ? args[0] : "micro";
var rest = args.Length > 0 && !args[0].StartsWith('-') ? args[1..] : args;
var results = DefaultResultsDirectory();

switch (command)
{
    case "server":
        await ServerProcess.RunChildAsync(rest);
        return 0;

    case "ab":
        return await AbCommand.RunAsync(rest);

    case "serverab":
        return await ServerAbCommand.RunAsync(rest);

    case "podexits":
        return await PodExitsCommand.RunAsync(rest);

    case "alloc":
        return await AllocationCheck.RunAsync(rest);

    case "scenarios":
        return await ScenarioCommand.RunAsync(ScenarioSettings.Parse(rest, results));

    case "micro":
    {
        var full = rest.Contains("--full");
        using var server = await ServerProcess.StartAsync();
        server.Export();
        var summary = BenchmarkRunner.Run<UnaryCallBenchmarks>(
            MicroConfig.Create(full, Path.Combine(results, "micro")),
            [.. rest.Where(a => a != "--full")]);
        return summary.HasCriticalValidationErrors || summary.Reports.Any(r => !r.Success) ? 1 : 0;
    }

    default:
        Console.Error.WriteLine($"Unknown command '{command}'. Use micro, scenarios, ab, serverab, podexits, alloc or server; see benchmarks/README.md.");
        return 2;
}

// benchmarks/results in the repository, found from the build output; the working directory otherwise.
static string DefaultResultsDirectory()
{
    for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
    {
        if (File.Exists(Path.Combine(directory.FullName, "ConnectionRefresh.sln")))
        {
            return Path.Combine(directory.FullName, "benchmarks", "results");
        }
    }

    return Path.Combine(Environment.CurrentDirectory, "benchmark-results");
}
