using System.Diagnostics;

namespace ConnectionRefresh.Benchmarks.Infrastructure;

/// <summary>
/// The benchmark server in a child process (this program with the <c>server</c> command), so that the client's
/// allocations and GC pauses are measured alone. The child prints its endpoints on one line and exits when its
/// standard input closes, i.e. when this process ends or disposes it. Each line <c>stats</c> on its standard input is
/// answered with one line of <see cref="ServerStats"/>.
/// </summary>
internal sealed class ServerProcess : IDisposable
{
    public const string H2cVariable = "CR_BENCH_H2C";
    public const string TlsVariable = "CR_BENCH_TLS";
    public const string ThumbprintVariable = "CR_BENCH_THUMBPRINT";

    private readonly Process _process;

    private ServerProcess(Process process, ServerSetup setup, Uri h2c, Uri tls, string thumbprint)
    {
        _process = process;
        Setup = setup;
        H2c = h2c;
        Tls = tls;
        Thumbprint = thumbprint;
    }

    public ServerSetup Setup { get; }

    public Uri H2c { get; }

    public Uri Tls { get; }

    public string Thumbprint { get; }

    /// <summary>
    /// What the server has spent so far (CPU time, allocated bytes) and its ConnectionRefresh.Server counts, as the
    /// child reports them: to attribute per-call cost to both sides. One request at a time (the callers measure in turns).
    /// </summary>
    public async Task<ServerStats> GetStatsAsync()
    {
        await _process.StandardInput.WriteLineAsync("stats").ConfigureAwait(false);
        await _process.StandardInput.FlushAsync().ConfigureAwait(false);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        var line = await _process.StandardOutput.ReadLineAsync(timeout.Token).ConfigureAwait(false)
            ?? throw new InvalidOperationException("The benchmark server exited.");
        return ServerStats.FromLine(line);
    }

    public static async Task<ServerProcess> StartAsync(ServerSetup? setup = null)
    {
        setup ??= ServerSetup.Plain;
        var start = new ProcessStartInfo(Environment.ProcessPath!)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        // Under `dotnet run` the process is the app host; under `dotnet x.dll` it is dotnet itself.
        if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!).Equals("dotnet", StringComparison.OrdinalIgnoreCase))
        {
            start.ArgumentList.Add(typeof(ServerProcess).Assembly.Location);
        }

        start.ArgumentList.Add("server");
        foreach (var argument in setup.ToArguments())
        {
            start.ArgumentList.Add(argument);
        }

        var process = Process.Start(start)!;
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            var line = await process.StandardOutput.ReadLineAsync(timeout.Token).ConfigureAwait(false)
                ?? throw new InvalidOperationException("The benchmark server exited before it listened.");
            var fields = line.Split(' ').Select(f => f.Split('=', 2)).ToDictionary(f => f[0], f => f[1]);
            var server = new ServerProcess(process, setup, new Uri(fields["h2c"]), new Uri(fields["tls"]), fields["thumbprint"]);
            await server.WarmUpAsync().ConfigureAwait(false);
            return server;
        }
        catch
        {
            process.Kill();
            process.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Brings the server to steady state (JIT tiers, pools) before anything is measured; without it, whatever runs
    /// first looks 2-3 times slower. Bounded: 20,000 calls or 5 seconds per transport.
    /// </summary>
    private async Task WarmUpAsync()
    {
        var request = new ConnectionRefresh.Protos.HelloRequest { Name = "warm-up" };
        foreach (var (address, thumbprint) in new[] { (H2c, (string?)null), (Tls, Thumbprint) })
        {
            using var channel = GreeterTarget.BareChannel(address, thumbprint);
            var client = new ConnectionRefresh.Protos.Greeter.GreeterClient(channel);
            var deadline = Stopwatch.GetTimestamp() + (5 * Stopwatch.Frequency);
            var calls = 0;
            await Task.WhenAll(Enumerable.Range(0, 4).Select(async _ =>
            {
                while (Interlocked.Increment(ref calls) <= 20_000 && Stopwatch.GetTimestamp() < deadline)
                {
                    await client.SayHelloAsync(request).ResponseAsync.ConfigureAwait(false);
                }
            })).ConfigureAwait(false);
        }
    }

    /// <summary>Runs the server until standard input closes (the <c>server</c> command), answering <c>stats</c> requests.</summary>
    public static async Task RunChildAsync(IReadOnlyList<string> args)
    {
        // Listening before the host starts, so that no connection of the package is missed.
        using var stats = new ServerStatsSource();
        await using var server = await BenchServer.StartAsync(ServerSetup.FromArguments(args)).ConfigureAwait(false);
        Console.WriteLine($"h2c={server.H2c} tls={server.Tls} thumbprint={server.Thumbprint}");
        Console.Out.Flush();
        while (await Console.In.ReadLineAsync().ConfigureAwait(false) is { } line)
        {
            if (line == "stats")
            {
                Console.WriteLine(stats.Snapshot().ToLine());
                Console.Out.Flush();
            }
        }
    }

    /// <summary>Makes the endpoints visible to BenchmarkDotNet's child processes, which inherit the environment.</summary>
    public void Export()
    {
        Environment.SetEnvironmentVariable(H2cVariable, H2c.ToString());
        Environment.SetEnvironmentVariable(TlsVariable, Tls.ToString());
        Environment.SetEnvironmentVariable(ThumbprintVariable, Thumbprint);
    }

    public void Dispose()
    {
        try
        {
            _process.StandardInput.Close();
            if (!_process.WaitForExit(TimeSpan.FromSeconds(10)))
            {
                _process.Kill();
            }
        }
        finally
        {
            _process.Dispose();
        }
    }
}
