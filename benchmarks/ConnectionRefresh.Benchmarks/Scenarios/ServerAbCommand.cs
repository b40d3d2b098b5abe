using System.Globalization;
using System.Text;
using ConnectionRefresh.Benchmarks.Infrastructure;

namespace ConnectionRefresh.Benchmarks.Scenarios;

/// <summary>
/// The <c>serverab</c> command: what ConnectionRefresh.Server costs a server per call. One server process per setup
/// (plain Kestrel, and the same server with the package), the same client strategy against each, alternated in short
/// slices (<see cref="PairedSlices"/>): calls/s, server CPU time and allocated bytes per call, each against plain
/// Kestrel. Checks from the package's own metrics that it handled the connections of the servers that have it.
/// </summary>
internal static class ServerAbCommand
{
    public static async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        string[] names = ["plain", "package", "package-after-https", "rotating"];
        var rotationAge = TimeSpan.FromSeconds(1);
        var settings = PairedSettings.Parse("serverab", args, (option, next) =>
        {
            switch (option)
            {
                case "--servers": names = ["plain", .. next().Split(',').Where(n => n != "plain").Distinct()]; return true;
                case "--rotation-age": rotationAge = TimeSpan.FromSeconds(double.Parse(next(), CultureInfo.InvariantCulture)); return true;
                default: return false;
            }
        });
        if (rotationAge < TimeSpan.FromSeconds(1) || rotationAge > TimeSpan.FromHours(24))
        {
            throw new ArgumentException("serverab: --rotation-age must be 1 to 86400 s (the package's range).");
        }

        var setups = names.Select(n => ServerSetup.Parse(n, rotationAge)).ToArray();
        var strategies = settings.Strategies ?? [Strategy.BareChannel];
        if (strategies.Contains(Strategy.NewConnectionPerCall))
        {
            throw new ArgumentException("serverab: a client that dials per call measures the dial, not the server's cost per call; use held clients.");
        }

        var servers = new List<ServerProcess>();
        try
        {
            foreach (var setup in setups)
            {
                servers.Add(await ServerProcess.StartAsync(setup).ConfigureAwait(false));
            }

            var report = new StringBuilder();
            report.AppendLine(CultureInfo.InvariantCulture, $"Measured {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {MachineInfo.Current()}.");
            report.AppendLine();
            report.AppendLine(CultureInfo.InvariantCulture, $"`serverab`: one server process per setup, {settings.Concurrency} concurrent unary calls from the same client strategy to each, closed loop; they take turns in {settings.Slice.TotalMilliseconds:N0} ms slices for {settings.Seconds:N0} s per transport, every client connected throughout. Setups: {string.Join("; ", setups.Select(s => $"`{s.Name}` = {s.Label}"))}.");
            report.AppendLine();
            var rows = new StringBuilder();
            var totals = new StringBuilder();
            var inactive = new List<string>();
            var notes = new List<string>();
            foreach (var transport in settings.Transports)
            {
                var arms = strategies
                    .SelectMany(strategy => servers.Select(server => new PairedArm(
                        GreeterTarget.Create(strategy, transport == "TLS" ? server.Tls : server.H2c, transport == "TLS" ? server.Thumbprint : null),
                        server)))
                    .ToArray();
                try
                {
                    var run = await PairedSlices.MeasureAsync(arms, settings.Seconds, settings.Slice, settings.Concurrency).ConfigureAwait(false);
                    AppendRows(rows, transport, strategies, servers, run);
                    foreach (var server in servers)
                    {
                        // Since the server started: its warm-up's two connections have ended by now, through the package if it has it.
                        var cumulative = await server.GetStatsAsync().ConfigureAwait(false);
                        var total = run.ServerTotals[server];
                        var calls = Enumerable.Range(0, arms.Length).Where(a => arms[a].Server == server).Sum(a => run.Slices[a].Sum(s => s.Calls));
                        totals.AppendLine(CultureInfo.InvariantCulture,
                            $"| {transport} | {server.Setup.Name} | {calls:N0} | {total.Cpu.TotalMicroseconds / Math.Max(1, calls):N2} | {total.AllocatedBytes / (double)Math.Max(1, calls):N0} | {cumulative.ConnectionsEnded:N0} | {total.ClosedByAge:N0} |");
                        if (server.Setup.Package != (cumulative.ConnectionsEnded > 0))
                        {
                            inactive.Add($"{transport} {server.Setup.Name}: {cumulative.ConnectionsEnded} connections ended through ConnectionRefresh.Server since start");
                        }

                        // The defaults' age (5 min, at least 270 s with the jitter) is meant to outlast a run; a short age to rotate in it.
                        if (server.Setup.Package && (server.Setup.MaxConnectionAge is null) != (total.ClosedByAge == 0))
                        {
                            notes.Add($"{transport} {server.Setup.Name}: {total.ClosedByAge} connections closed by age during the run ({(total.ClosedByAge == 0 ? "no rotation: the run is shorter than the age" : "the default age was reached: shorten --seconds")})");
                        }
                    }
                }
                finally
                {
                    foreach (var arm in arms)
                    {
                        await arm.Target.DisposeAsync().ConfigureAwait(false);
                    }
                }
            }

            report.AppendLine("Per slice (server figures from the server that answered, within its slices; ratios paired by cycle against plain Kestrel with the same client):");
            report.AppendLine();
            report.AppendLine("| transport | client | server | calls/s | calls/s vs plain: median of cycles (95 % interval of the mean) | server CPU µs/call | server CPU/call vs plain: median of cycles (95 % interval) | server B/call | server B/call vs plain: difference; median of cycles (95 % interval) | client CPU µs/call | failed |");
            report.AppendLine("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
            report.Append(rows);
            report.AppendLine();
            report.AppendLine("Per server process, from the end of the warm-up to the end of each transport's run (everything the server did, also between its slices, per call it answered), and the package's metrics:");
            report.AppendLine();
            report.AppendLine("| transport | server | calls answered | server CPU µs/call | server B/call | connections ended through the package, since start | closed by age, this run |");
            report.AppendLine("|---|---|---:|---:|---:|---:|---:|");
            report.Append(totals);
            if (inactive.Count > 0)
            {
                report.AppendLine();
                report.AppendLine(CultureInfo.InvariantCulture, $"**Check failed** (a server with the package must have ended connections through it, one without must not): {string.Join("; ", inactive)}.");
            }

            if (notes.Count > 0)
            {
                report.AppendLine();
                report.AppendLine(CultureInfo.InvariantCulture, $"Note: {string.Join("; ", notes)}.");
            }

            await settings.WriteAsync(report.ToString(), "serverab.md").ConfigureAwait(false);
            return inactive.Count > 0 ? 1 : 0;
        }
        finally
        {
            foreach (var server in servers)
            {
                server.Dispose();
            }
        }
    }

    private static double ServerBytesPerCall(ArmSlice s) => s.Calls == 0 ? double.NaN : s.Server.AllocatedBytes / (double)s.Calls;

    private static void AppendRows(StringBuilder rows, string transport, Strategy[] strategies, List<ServerProcess> servers, PairedRun run)
    {
        for (var c = 0; c < strategies.Length; c++)
        {
            // Arms are strategy-major: the plain server (always first) of this strategy is the baseline.
            var plain = run.Slices[c * servers.Count];
            var plainBytes = PairedSlices.PerCall(plain, s => s.Server.AllocatedBytes);
            for (var v = 0; v < servers.Count; v++)
            {
                var slices = run.Slices[(c * servers.Count) + v];
                var rate = PairedSlices.Ratio(slices, plain, s => s.CallsPerSecond);
                var cpu = PairedSlices.Ratio(slices, plain, PairedSlices.ServerCpuPerCall);
                var bytes = PairedSlices.PerCall(slices, s => s.Server.AllocatedBytes);
                // Not a fixed count: Kestrel allocates where an await does not complete at once, which depends on timing.
                var vsPlainBytes = v == 0 ? "–" : string.Create(CultureInfo.InvariantCulture,
                    $"{bytes - plainBytes:+#,0;-#,0;0} B, {PairedSlices.Ratio(slices, plain, ServerBytesPerCall).Format()}");
                rows.AppendLine(CultureInfo.InvariantCulture,
                    $"| {transport} | {strategies[c].Label()} | {servers[v].Setup.Name} | {PairedSlices.CallsPerSecond(slices):N0} | {(v == 0 ? "100 %" : rate.Format())} | {PairedSlices.PerCall(slices, PairedSlices.ServerCpuMicros):N2} | {(v == 0 ? "100 %" : cpu.Format())} | {bytes:N0} | {vsPlainBytes} | {PairedSlices.PerCall(slices, PairedSlices.ClientCpuMicros):N1} | {slices.Sum(s => s.Failures)} |");
            }
        }
    }
}
