using System.Globalization;
using System.Text;
using ConnectionRefresh.Benchmarks.Infrastructure;

namespace ConnectionRefresh.Benchmarks.Scenarios;

/// <summary>
/// The <c>ab</c> command: calls/s of a few strategies against the bare channel, alternated in short slices. Every
/// client stays connected for the whole run and the strategies take turns every slice (in an order that reverses
/// each cycle), so a slow phase of the machine, which lasts seconds, falls on all of them alike: the per-cycle
/// ratios are paired a fraction of a second apart. Also counts the CPU time of both processes per call.
/// </summary>
internal static class AbCommand
{
    private sealed record Slice(long Calls, long Failures, TimeSpan Elapsed, TimeSpan ClientCpu, TimeSpan ServerCpu);

    public static async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var seconds = 60.0;
        var slice = TimeSpan.FromMilliseconds(250);
        var concurrency = 8;
        string? output = null;
        Strategy[] strategies = [Strategy.BareChannel, Strategy.GrpcClientDefaults, Strategy.Refresh1];
        string[] transports = ["h2c", "TLS"];
        for (var i = 0; i < args.Count; i++)
        {
            string Next() => i + 1 < args.Count ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
            switch (args[i])
            {
                case "--seconds": seconds = double.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--slice-ms": slice = TimeSpan.FromMilliseconds(double.Parse(Next(), CultureInfo.InvariantCulture)); break;
                case "--concurrency": concurrency = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--strategies": strategies = [Strategy.BareChannel, .. Next().Split(',').Select(Enum.Parse<Strategy>).Where(s => s != Strategy.BareChannel)]; break;
                case "--transports": transports = Next().Split(','); break;
                case "--out": output = Path.GetFullPath(Next()); break;
                default: throw new ArgumentException($"Unknown option '{args[i]}'. See benchmarks/README.md.");
            }
        }

        if (seconds is <= 0 or > 3600 || slice <= TimeSpan.Zero || concurrency < 1 || strategies.Contains(Strategy.NewConnectionPerCall)
            || strategies.Contains(Strategy.KubernetesResolver) || transports.Any(t => t is not ("h2c" or "TLS")))
        {
            throw new ArgumentException("ab: --seconds must be in (0, 3600], --slice-ms and --concurrency positive, --transports h2c and/or TLS; per-call dialing is for `scenarios`, the Kubernetes resolver for its cluster part.");
        }

        using var server = await ServerProcess.StartAsync().ConfigureAwait(false);
        var report = new StringBuilder();
        report.AppendLine(CultureInfo.InvariantCulture, $"Measured {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {MachineInfo.Current()}.");
        report.AppendLine();
        report.AppendLine(CultureInfo.InvariantCulture, $"`ab`: {concurrency} concurrent unary calls, closed loop; the strategies take turns in {slice.TotalMilliseconds:N0} ms slices for {seconds:N0} s per transport, every client connected throughout.");
        report.AppendLine();
        report.AppendLine("| transport | strategy | calls/s | vs bare (median of cycles) | 95 % interval of the mean | vs AddGrpcClient defaults (median of cycles) | client CPU µs/call | server CPU µs/call | CPU of both vs bare | failed |");
        report.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var transport in transports)
        {
            var (address, thumbprint) = transport == "TLS"
                ? (server.Tls, (string?)server.Thumbprint)
                : (server.H2c, null);
            var slices = await MeasureAsync(server, strategies, address, thumbprint, seconds, slice, concurrency).ConfigureAwait(false);
            AppendRows(report, transport, strategies, slices);
        }

        Console.WriteLine();
        Console.Write(report);
        if (output is not null)
        {
            Directory.CreateDirectory(output);
            await File.WriteAllTextAsync(Path.Combine(output, "ab.md"), report.ToString()).ConfigureAwait(false);
            Console.WriteLine($"wrote {Path.Combine(output, "ab.md")}");
        }

        return 0;
    }

    private static async Task<List<Slice>[]> MeasureAsync(
        ServerProcess server, Strategy[] strategies, Uri address, string? thumbprint, double seconds, TimeSpan slice, int concurrency)
    {
        var targets = strategies.Select(s => GreeterTarget.Create(s, address, thumbprint)).ToArray();
        try
        {
            foreach (var target in targets)
            {
                await LoadLoop.RunAsync([target], concurrency, TimeSpan.FromSeconds(1), 1_000_000, recordLatency: false).ConfigureAwait(false);
            }

            var slices = strategies.Select(_ => new List<Slice>()).ToArray();
            var cycles = Math.Max(2, (int)Math.Ceiling(seconds / (slice.TotalSeconds * strategies.Length)));
            for (var cycle = 0; cycle < cycles; cycle++)
            {
                for (var k = 0; k < strategies.Length; k++)
                {
                    // Forward on even cycles, backward on odd ones: within two cycles every strategy sits, on average,
                    // at the same point in time.
                    var s = cycle % 2 == 0 ? k : strategies.Length - 1 - k;
                    var client = ThroughputScenario.ClientCpuTime();
                    var serverCpu = server.CpuTime;
                    var load = await LoadLoop.RunAsync([targets[s]], concurrency, slice, 1_000_000, recordLatency: false).ConfigureAwait(false);
                    slices[s].Add(new Slice(load.Calls, load.Failures, load.Elapsed,
                        ThroughputScenario.ClientCpuTime() - client, server.CpuTime - serverCpu));
                }
            }

            return slices;
        }
        finally
        {
            foreach (var target in targets)
            {
                await target.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    private static void AppendRows(StringBuilder report, string transport, Strategy[] strategies, List<Slice>[] slices)
    {
        static double Rate(Slice s) => s.Calls / s.Elapsed.TotalSeconds;
        var bare = slices[0];
        var defaults = Array.IndexOf(strategies, Strategy.GrpcClientDefaults) is var d and >= 0 ? slices[d] : null;
        var bareCpu = CpuPerCall(bare, s => s.ClientCpu) + CpuPerCall(bare, s => s.ServerCpu);
        for (var i = 0; i < strategies.Length; i++)
        {
            var ratios = slices[i].Zip(bare, (a, b) => Rate(a) / Rate(b)).ToArray();
            var mean = ratios.Average();
            var sd = Math.Sqrt(ratios.Sum(r => (r - mean) * (r - mean)) / (ratios.Length - 1));
            var half = 1.96 * sd / Math.Sqrt(ratios.Length);
            var calls = slices[i].Sum(s => s.Calls);
            var rate = calls / slices[i].Sum(s => s.Elapsed.TotalSeconds);
            var client = CpuPerCall(slices[i], s => s.ClientCpu);
            var serverCpu = CpuPerCall(slices[i], s => s.ServerCpu);
            var vsDefaults = defaults is null ? "-" : ThroughputResult.Median(slices[i].Zip(defaults, (a, b) => Rate(a) / Rate(b))).ToString("P1", CultureInfo.InvariantCulture);
            report.AppendLine(CultureInfo.InvariantCulture,
                $"| {transport} | {strategies[i].Label()} | {rate:N0} | {ThroughputResult.Median(ratios):P1} | {mean - half:P1} – {mean + half:P1} | {vsDefaults} | {client:N1} | {serverCpu:N1} | {(client + serverCpu) / bareCpu:P1} | {slices[i].Sum(s => s.Failures)} |");
        }
    }

    private static double CpuPerCall(List<Slice> slices, Func<Slice, TimeSpan> cpu)
        => slices.Sum(s => cpu(s).TotalMicroseconds) / Math.Max(1, slices.Sum(s => s.Calls));
}
