using System.Globalization;
using ConnectionRefresh.Benchmarks.Infrastructure;

namespace ConnectionRefresh.Benchmarks.Scenarios;

/// <summary>One client against one server process: what the paired commands (<c>ab</c>, <c>serverab</c>) alternate.</summary>
internal sealed record PairedArm(GreeterTarget Target, ServerProcess Server);

/// <summary>One turn of an arm: its calls, and what they cost the client and the server that answered them.</summary>
internal sealed record ArmSlice(long Calls, long Failures, TimeSpan Elapsed, TimeSpan ClientCpu, ServerStats Server)
{
    public double CallsPerSecond => Calls / Elapsed.TotalSeconds;
}

/// <param name="Slices">Per arm, its slices in cycle order: slice <c>i</c> of every arm belongs to cycle <c>i</c>.</param>
/// <param name="ServerTotals">
/// Per server process, what it spent from the end of the warm-up to the end of the run, inside its arms' slices or
/// not (work that happens between them, such as a connection closed by age while another arm runs, is only here).
/// </param>
internal sealed record PairedRun(List<ArmSlice>[] Slices, IReadOnlyDictionary<ServerProcess, ServerStats> ServerTotals);

/// <summary>Median and a 95 % interval (mean ± 1.96 standard errors) of per-cycle ratios.</summary>
internal readonly record struct PairedRatio(double Median, double Low, double High)
{
    public string Format(string format = "P1") => string.Create(CultureInfo.InvariantCulture,
        $"{Median.ToString(format, CultureInfo.InvariantCulture)} ({Low.ToString(format, CultureInfo.InvariantCulture)} – {High.ToString(format, CultureInfo.InvariantCulture)})");
}

/// <summary>
/// The slicing of the paired commands. Every client stays connected for the whole run and the arms take turns in
/// short slices, in an order that reverses each cycle, so a slow phase of the machine, which lasts seconds, falls on
/// all of them alike: the per-cycle ratios compare runs a fraction of a second apart. Each slice records the client's
/// CPU time and the answering server's CPU time and allocated bytes, as the server process reports them.
/// </summary>
internal static class PairedSlices
{
    /// <summary>Calls a slice may make at most (with the slice's time, the bound of every load loop).</summary>
    private const int MaxCallsPerSlice = 1_000_000;

    public static async Task<PairedRun> MeasureAsync(IReadOnlyList<PairedArm> arms, double seconds, TimeSpan slice, int concurrency)
    {
        foreach (var arm in arms)
        {
            await LoadLoop.RunAsync([arm.Target], concurrency, TimeSpan.FromSeconds(1), MaxCallsPerSlice, recordLatency: false).ConfigureAwait(false);
        }

        var servers = arms.Select(a => a.Server).Distinct().ToArray();
        var start = new Dictionary<ServerProcess, ServerStats>();
        foreach (var server in servers)
        {
            start[server] = await server.GetStatsAsync().ConfigureAwait(false);
        }

        var slices = arms.Select(_ => new List<ArmSlice>()).ToArray();
        var cycles = Math.Max(2, (int)Math.Ceiling(seconds / (slice.TotalSeconds * arms.Count)));
        for (var cycle = 0; cycle < cycles; cycle++)
        {
            for (var k = 0; k < arms.Count; k++)
            {
                // Forward on even cycles, backward on odd ones: within two cycles every arm sits, on average, at the
                // same point in time.
                var a = cycle % 2 == 0 ? k : arms.Count - 1 - k;
                var client = ThroughputScenario.ClientCpuTime();
                var server = await arms[a].Server.GetStatsAsync().ConfigureAwait(false);
                var load = await LoadLoop.RunAsync([arms[a].Target], concurrency, slice, MaxCallsPerSlice, recordLatency: false).ConfigureAwait(false);
                var serverAfter = await arms[a].Server.GetStatsAsync().ConfigureAwait(false);
                slices[a].Add(new ArmSlice(load.Calls, load.Failures, load.Elapsed, ThroughputScenario.ClientCpuTime() - client, serverAfter - server));
            }
        }

        var totals = new Dictionary<ServerProcess, ServerStats>();
        foreach (var server in servers)
        {
            totals[server] = await server.GetStatsAsync().ConfigureAwait(false) - start[server];
        }

        return new PairedRun(slices, totals);
    }

    /// <summary>Per-cycle ratios of <paramref name="value"/> between an arm's slices and the baseline's.</summary>
    public static PairedRatio Ratio(List<ArmSlice> arm, List<ArmSlice> baseline, Func<ArmSlice, double> value)
    {
        var ratios = arm.Zip(baseline, (a, b) => value(a) / value(b)).Where(double.IsFinite).ToArray();
        if (ratios.Length < 2)
        {
            return new PairedRatio(double.NaN, double.NaN, double.NaN);
        }

        var mean = ratios.Average();
        var sd = Math.Sqrt(ratios.Sum(r => (r - mean) * (r - mean)) / (ratios.Length - 1));
        var half = 1.96 * sd / Math.Sqrt(ratios.Length);
        return new PairedRatio(ThroughputResult.Median(ratios), mean - half, mean + half);
    }

    /// <summary>A total over all slices divided by all their calls.</summary>
    public static double PerCall(List<ArmSlice> slices, Func<ArmSlice, double> total)
        => slices.Sum(total) / Math.Max(1, slices.Sum(s => s.Calls));

    public static double CallsPerSecond(List<ArmSlice> slices) => slices.Sum(s => s.Calls) / slices.Sum(s => s.Elapsed.TotalSeconds);

    public static double ClientCpuMicros(ArmSlice s) => s.ClientCpu.TotalMicroseconds;

    public static double ServerCpuMicros(ArmSlice s) => s.Server.Cpu.TotalMicroseconds;

    /// <summary>Server CPU per call within one slice: NaN for a slice without calls, which <see cref="Ratio"/> skips.</summary>
    public static double ServerCpuPerCall(ArmSlice s) => s.Calls == 0 ? double.NaN : s.Server.Cpu.TotalMicroseconds / s.Calls;
}

/// <summary>Options of the paired commands, <c>ab</c> and <c>serverab</c>; each adds its own.</summary>
internal sealed class PairedSettings
{
    public double Seconds { get; private set; } = 60;

    public TimeSpan Slice { get; private set; } = TimeSpan.FromMilliseconds(250);

    public int Concurrency { get; private set; } = 8;

    /// <summary>As given with <c>--strategies</c>; null: the command's default.</summary>
    public Strategy[]? Strategies { get; private set; }

    public string[] Transports { get; private set; } = ["h2c", "TLS"];

    public string? Output { get; private set; }

    /// <param name="own">The command's own options: gets the option and a function reading its value; false if unknown.</param>
    public static PairedSettings Parse(string command, IReadOnlyList<string> args, Func<string, Func<string>, bool> own)
    {
        var settings = new PairedSettings();
        for (var i = 0; i < args.Count; i++)
        {
            string Next() => i + 1 < args.Count ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
            switch (args[i])
            {
                case "--seconds": settings.Seconds = double.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--slice-ms": settings.Slice = TimeSpan.FromMilliseconds(double.Parse(Next(), CultureInfo.InvariantCulture)); break;
                case "--concurrency": settings.Concurrency = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--strategies": settings.Strategies = [.. Next().Split(',').Select(Enum.Parse<Strategy>).Distinct()]; break;
                case "--transports": settings.Transports = Next().Split(','); break;
                case "--out": settings.Output = Path.GetFullPath(Next()); break;
                default:
                    if (!own(args[i], Next))
                    {
                        throw new ArgumentException($"{command}: unknown option '{args[i]}'. See benchmarks/README.md.");
                    }

                    break;
            }
        }

        if (settings.Seconds is <= 0 or > 3600 || settings.Slice <= TimeSpan.Zero || settings.Concurrency < 1
            || settings.Strategies?.Contains(Strategy.KubernetesResolver) == true
            || settings.Transports.Any(t => t is not ("h2c" or "TLS")))
        {
            throw new ArgumentException($"{command}: --seconds must be in (0, 3600], --slice-ms and --concurrency positive, --transports h2c and/or TLS; the Kubernetes resolver is for the cluster part of `scenarios`.");
        }

        return settings;
    }

    /// <summary>Prints the report and, with <c>--out</c>, writes it to <paramref name="fileName"/> there.</summary>
    public async Task WriteAsync(string report, string fileName)
    {
        Console.WriteLine();
        Console.Write(report);
        if (Output is not null)
        {
            Directory.CreateDirectory(Output);
            await File.WriteAllTextAsync(Path.Combine(Output, fileName), report).ConfigureAwait(false);
            Console.WriteLine($"wrote {Path.Combine(Output, fileName)}");
        }
    }
}
