using System.Globalization;
using System.Text;
using ConnectionRefresh.Benchmarks.Infrastructure;

namespace ConnectionRefresh.Benchmarks.Scenarios;

/// <summary>
/// The <c>ab</c> command: calls/s of a few strategies against the bare channel, alternated in short slices
/// (<see cref="PairedSlices"/>), all against one server process. Also counts the CPU time of both processes per call.
/// With <see cref="Strategy.NewConnectionPerCall"/> among the strategies, every strategy's ratio to it is paired by cycle too.
/// </summary>
internal static class AbCommand
{
    public static async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var settings = PairedSettings.Parse("ab", args, (_, _) => false);
        Strategy[] strategies = [Strategy.BareChannel, .. (settings.Strategies ?? [Strategy.GrpcClientDefaults, Strategy.Refresh1]).Where(s => s != Strategy.BareChannel)];

        using var server = await ServerProcess.StartAsync().ConfigureAwait(false);
        var report = new StringBuilder();
        report.AppendLine(CultureInfo.InvariantCulture, $"Measured {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {MachineInfo.Current()}.");
        report.AppendLine();
        report.AppendLine(CultureInfo.InvariantCulture, $"`ab`: {settings.Concurrency} concurrent unary calls, closed loop; the strategies take turns in {settings.Slice.TotalMilliseconds:N0} ms slices for {settings.Seconds:N0} s per transport, every client connected throughout.");
        report.AppendLine();
        report.AppendLine("| transport | strategy | calls/s | vs bare (median of cycles) | 95 % interval of the mean | vs AddGrpcClient defaults (median of cycles) | vs new connection per call (median of cycles, 95 % interval) | client CPU µs/call | server CPU µs/call | CPU of both vs bare | server B/call | failed |");
        report.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var transport in settings.Transports)
        {
            var (address, thumbprint) = transport == "TLS"
                ? (server.Tls, (string?)server.Thumbprint)
                : (server.H2c, null);
            var arms = strategies.Select(s => new PairedArm(GreeterTarget.Create(s, address, thumbprint), server)).ToArray();
            try
            {
                var run = await PairedSlices.MeasureAsync(arms, settings.Seconds, settings.Slice, settings.Concurrency).ConfigureAwait(false);
                AppendRows(report, transport, strategies, run.Slices);
            }
            finally
            {
                foreach (var arm in arms)
                {
                    await arm.Target.DisposeAsync().ConfigureAwait(false);
                }
            }
        }

        await settings.WriteAsync(report.ToString(), "ab.md").ConfigureAwait(false);
        return 0;
    }

    private static void AppendRows(StringBuilder report, string transport, Strategy[] strategies, List<ArmSlice>[] slices)
    {
        var bare = slices[0];
        var defaults = Array.IndexOf(strategies, Strategy.GrpcClientDefaults) is var d and >= 0 ? slices[d] : null;
        var perCall = Array.IndexOf(strategies, Strategy.NewConnectionPerCall) is var p and >= 0 ? slices[p] : null;
        var bareCpu = PairedSlices.PerCall(bare, PairedSlices.ClientCpuMicros) + PairedSlices.PerCall(bare, PairedSlices.ServerCpuMicros);
        for (var i = 0; i < strategies.Length; i++)
        {
            var ratio = PairedSlices.Ratio(slices[i], bare, s => s.CallsPerSecond);
            var client = PairedSlices.PerCall(slices[i], PairedSlices.ClientCpuMicros);
            var serverCpu = PairedSlices.PerCall(slices[i], PairedSlices.ServerCpuMicros);
            var serverBytes = PairedSlices.PerCall(slices[i], s => s.Server.AllocatedBytes);
            var vsDefaults = defaults is null ? "-" : PairedSlices.Ratio(slices[i], defaults, s => s.CallsPerSecond).Median.ToString("P1", CultureInfo.InvariantCulture);
            var vsPerCall = perCall is null ? "-" : PairedSlices.Ratio(slices[i], perCall, s => s.CallsPerSecond).Format("0.00×");
            report.AppendLine(CultureInfo.InvariantCulture,
                $"| {transport} | {strategies[i].Label()} | {PairedSlices.CallsPerSecond(slices[i]):N0} | {ratio.Median:P1} | {ratio.Low:P1} – {ratio.High:P1} | {vsDefaults} | {vsPerCall} | {client:N1} | {serverCpu:N1} | {(client + serverCpu) / bareCpu:P1} | {serverBytes:N0} | {slices[i].Sum(s => s.Failures)} |");
        }
    }
}
