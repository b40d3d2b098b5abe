using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Grpc.Core;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Benchmarks.Scenarios;

/// <summary>
/// The <c>podexits</c> command: calls lost at a pod's exit. Each strategy gets its own simulated cluster (3 pods, 4 calls
/// at once per pod, preStop 200 ms) whose pods are replaced by rolling updates back to back (300–700 pod exits a minute),
/// while 3 clients × 4 callers send 10 ms unary calls; every strategy runs once with plain pods and once with
/// <c>ConnectionRefresh.Server</c> on every pod (no age, no idleness limit: it only holds the sockets of the pods'
/// shutdown closes), all side by side. Loopback only; bounded by <c>--seconds</c> and a call cap per caller.
/// </summary>
internal static class PodExitsCommand
{
    private const int Clients = 3;
    private const int CallersPerClient = 4;
    private const int MaxCallsPerCaller = 1_000_000;
    private const int MaxRollingUpdates = 100_000;
    private const string ServerSuffix = "+server";

    // direct: a SocketsHttpHandler with a ConnectCallback that dials a random ready pod (no ClusterIP, as DNAT would pick);
    // defaults: AddGrpcClient through the ClusterIP; defaults-connect: the same handler, given a ConnectCallback that dials
    // the same address as SocketsHttpHandler's built-in connect does; k1, k4: AddConnectionRefresh.
    private static readonly string[] KnownStrategies = ["direct", "defaults", "defaults-connect", "k1", "k4"];

    private sealed record Failure(TimeSpan At, string Chain);

    private sealed record Outcome(string Name, long Ok, long Failed, int PodExits, double MedianStopMs, double MaxStopMs, List<(Failure Failure, double OffsetMs)> Failures);

    public static async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var seconds = 60;
        var mode = KubeProxyMode.Userspace;
        var preStop = TimeSpan.FromMilliseconds(200);
        string[] strategies = ["direct", "defaults", "k1", "k4"];
        string? balancerLog = null;
        for (var i = 0; i < args.Count; i++)
        {
            string Next() => i + 1 < args.Count ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
            switch (args[i])
            {
                case "--seconds": seconds = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--mode": mode = Enum.Parse<KubeProxyMode>(Next(), ignoreCase: true); break;
                case "--prestop-ms": preStop = TimeSpan.FromMilliseconds(int.Parse(Next(), CultureInfo.InvariantCulture)); break;
                case "--strategies": strategies = Next().Split(','); break;
                case "--balancer-log": balancerLog = Next(); break;
                default: throw new ArgumentException($"Unknown option '{args[i]}'. See benchmarks/README.md.");
            }
        }

        if (seconds is < 1 or > 600 || strategies.Any(s => !KnownStrategies.Contains(s)) || preStop < TimeSpan.Zero)
        {
            throw new ArgumentException($"podexits: --seconds must be 1–600, --prestop-ms not negative, --strategies among {string.Join(',', KnownStrategies)}.");
        }

        if (mode == KubeProxyMode.Iptables && strategies.Contains("direct"))
        {
            throw new ArgumentException("podexits: 'direct' dials the pods' own addresses, which the iptables mode does not expose; leave it out there.");
        }

        var runs = strategies.SelectMany(s => new[] { s, s + ServerSuffix }).ToArray();
        Console.WriteLine($"podexits: {string.Join(", ", runs)}; {mode}, {seconds} s, preStop {preStop.TotalMilliseconds:N0} ms, side by side.");
        var outcomes = await Task.WhenAll(runs.Select(r => RunOneAsync(r, mode, seconds, preStop, balancerLog))).ConfigureAwait(false);

        var report = new StringBuilder();
        report.AppendLine($"Measured {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {MachineInfo.Current()}; {mode} mode, {seconds} s.");
        report.AppendLine();
        report.AppendLine("| strategy | pods | calls OK | failed | pod exits | failed per 100 exits | pod stop median / max (ms) |");
        report.AppendLine("|---|---|---:|---:|---:|---:|---:|");
        foreach (var o in outcomes)
        {
            var server = o.Name.EndsWith(ServerSuffix, StringComparison.Ordinal);
            report.AppendLine($"| {(server ? o.Name[..^ServerSuffix.Length] : o.Name)} | {(server ? "ConnectionRefresh.Server" : "plain")} | {o.Ok:N0} | {o.Failed:N0} | {o.PodExits:N0} | {100.0 * o.Failed / Math.Max(1, o.PodExits):F2} | {o.MedianStopMs:F0} / {o.MaxStopMs:F0} |");
        }

        foreach (var o in outcomes.Where(o => o.Failures.Count > 0))
        {
            report.AppendLine();
            report.AppendLine($"{o.Name}: failures by exception chain (time from the nearest pod exit, ms):");
            foreach (var group in o.Failures.GroupBy(f => f.Failure.Chain).OrderByDescending(g => g.Count()))
            {
                report.AppendLine($"  {group.Count()} × [{group.Min(f => f.OffsetMs):+0;-0;0} … {group.Max(f => f.OffsetMs):+0;-0;0}] {group.Key}");
            }
        }

        Console.WriteLine();
        Console.Write(report);
        return 0;
    }

    private static async Task<Outcome> RunOneAsync(string name, KubeProxyMode mode, int seconds, TimeSpan preStop, string? balancerLog)
    {
        var withServer = name.EndsWith(ServerSuffix, StringComparison.Ordinal);
        var strategy = withServer ? name[..^ServerSuffix.Length] : name;
        var options = new SimulatedClusterOptions
        {
            Replicas = 3,
            ProxyMode = mode,
            TerminationGracePeriod = TimeSpan.FromSeconds(10),
            PreStopDelay = preStop,
            MaxConcurrentCallsPerPod = 4,
        };
        if (withServer)
        {
            options.ConfigureServices = services => services.AddServerConnectionAge(o =>
            {
                o.MaxConnectionAge = Timeout.InfiniteTimeSpan;
                o.MaxConnectionIdle = Timeout.InfiniteTimeSpan;
            });
            options.ConfigureListen = listen => listen.UseServerConnectionAge();
        }

        await using var cluster = await SimulatedCluster.StartAsync(options).ConfigureAwait(false);
        var log = balancerLog is null ? null : new TimedLog(cluster);
        var providers = Enumerable.Range(0, Clients).Select(c => BuildClient(strategy, cluster, log, $"c{c}")).ToList();
        try
        {
            long ok = 0, failed = 0;
            var failures = new ConcurrentBag<Failure>();
            using var stop = new CancellationTokenSource();
            var callers = providers.SelectMany((provider, c) => Enumerable.Range(0, CallersPerClient).Select(w => CallLoopAsync(
                provider.GetRequiredService<Greeter.GreeterClient>(), $"c{c}w{w}", cluster, failures, () => Interlocked.Increment(ref ok), () => Interlocked.Increment(ref failed), stop.Token))).ToList();

            var clock = Stopwatch.StartNew();
            try
            {
                for (var u = 0; u < MaxRollingUpdates && clock.Elapsed < TimeSpan.FromSeconds(seconds); u++)
                {
                    await cluster.RollingUpdateAsync().ConfigureAwait(false);
                }
            }
            finally
            {
                await stop.CancelAsync().ConfigureAwait(false);
                await Task.WhenAll(callers).ConfigureAwait(false);
            }

            var events = cluster.Summary().Events;
            var exits = events.Where(e => e.Kind == ClusterEventKind.PodStopped).ToList();
            var stopMs = exits
                .Select(e => events.LastOrDefault(s => s.Kind == ClusterEventKind.PodStopping && s.Pod == e.Pod && s.At <= e.At) is { } s ? (e.At - s.At).TotalMilliseconds : double.NaN)
                .Where(d => !double.IsNaN(d)).Order().ToList();
            if (log is not null)
            {
                Directory.CreateDirectory(balancerLog!);
                var lines = log.Lines
                    .Concat(events.Where(e => e.Kind is ClusterEventKind.PodStopping or ClusterEventKind.PodStopped).Select(e => (e.At, $"cluster {e.Kind} {e.Pod}")))
                    .Concat(failures.Select(f => (f.At, $"FAILED {f.Chain}")))
                    .OrderBy(l => l.Item1)
                    .Select(l => $"{l.Item1.TotalMilliseconds,10:F1} {l.Item2}");
                await File.WriteAllLinesAsync(Path.Combine(balancerLog!, name + ".log"), lines).ConfigureAwait(false);
            }

            var located = failures
                .Select(f => (f, exits.Count == 0 ? double.NaN : exits.Select(e => (f.At - e.At).TotalMilliseconds).MinBy(Math.Abs)))
                .ToList();
            return new Outcome(name, ok, failed, exits.Count, stopMs.Count == 0 ? 0 : stopMs[stopMs.Count / 2], stopMs.Count == 0 ? 0 : stopMs[^1], located);
        }
        finally
        {
            foreach (var provider in providers)
            {
                await provider.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    private static async Task CallLoopAsync(
        Greeter.GreeterClient client, string caller, SimulatedCluster cluster, ConcurrentBag<Failure> failures, Action onOk, Action onFailed, CancellationToken stop)
    {
        await Task.Yield();
        var request = new HelloRequest { Name = caller, DelayMs = 10 };
        for (var i = 0; i < MaxCallsPerCaller && !stop.IsCancellationRequested; i++)
        {
            try
            {
                await client.SayHelloAsync(request, new CallOptions(deadline: DateTime.UtcNow.AddSeconds(2), cancellationToken: stop)).ConfigureAwait(false);
                onOk();
            }
            catch (RpcException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (RpcException ex)
            {
                onFailed();
                failures.Add(new Failure(cluster.Elapsed(), Chain(ex)));
                try
                {
                    // A short back-off, as a caller would, so that one outage is not counted hundreds of times.
                    await Task.Delay(50, stop).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    private static ServiceProvider BuildClient(string strategy, SimulatedCluster cluster, TimedLog? log, string clientName)
    {
        var services = new ServiceCollection();
        if (log is not null)
        {
            // grpc-dotnet's load-balancing logs (subchannel states, the socket transport's pre-connect, checks and streams).
            services.AddLogging(b => b.SetMinimumLevel(LogLevel.Trace).AddFilter((category, _) => category?.StartsWith("Grpc.Net.Client.Balancer", StringComparison.Ordinal) == true).AddProvider(new TimedLogProvider(log, clientName)));
        }

        var builder = services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = cluster.Address);
        switch (strategy)
        {
            case "direct":
                builder.ConfigurePrimaryHttpMessageHandler(() => new SocketsHttpHandler
                {
                    EnableMultipleHttp2Connections = true,
                    ConnectCallback = (_, ct) =>
                    {
                        var ready = cluster.ReadyPods;
                        if (ready.Count == 0)
                        {
                            throw new HttpRequestException("No ready pod.");
                        }

                        var pod = ready[Random.Shared.Next(ready.Count)];
                        return DialAsync(pod.Address.Host, pod.Address.Port, ct);
                    },
                });
                break;
            case "defaults-connect":
                builder.ConfigurePrimaryHttpMessageHandler((handler, _) =>
                    ((SocketsHttpHandler)handler).ConnectCallback = (context, ct) => DialAsync(context.DnsEndPoint.Host, context.DnsEndPoint.Port, ct));
                break;
            case "k1" or "k4":
                builder.AddConnectionRefresh(o =>
                {
                    o.MaxConnectionAge = TimeSpan.FromSeconds(5);
                    o.KeepAlivePingDelay = TimeSpan.FromSeconds(2);
                    o.KeepAlivePingTimeout = TimeSpan.FromSeconds(1);
                    o.ConnectionsPerEndpoint = strategy == "k4" ? 4 : 1;
                });
                break;
            default:
                break;
        }

        return services.BuildServiceProvider();
    }

    private static async ValueTask<Stream> DialAsync(string host, int port, CancellationToken cancellationToken)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(host, port, cancellationToken).ConfigureAwait(false);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private static string Chain(RpcException ex)
    {
        var parts = new List<string> { $"RpcException({ex.StatusCode})" };
        for (var e = ex.Status.DebugException ?? ex.InnerException; e is not null && parts.Count < 8; e = e.InnerException)
        {
            parts.Add($"{e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")}");
        }

        return string.Join(" -> ", parts);
    }

    // --balancer-log: log lines stamped with the cluster's clock, so that they line up with its pod events.
    private sealed class TimedLog(SimulatedCluster cluster)
    {
        private readonly ConcurrentQueue<(TimeSpan, string)> _lines = new();

        public IEnumerable<(TimeSpan, string)> Lines => _lines;

        public void Add(string line)
        {
            if (_lines.Count < 2_000_000)
            {
                _lines.Enqueue((cluster.Elapsed(), line));
            }
        }
    }

    private sealed class TimedLogProvider(TimedLog log, string clientName) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new TimedLogger(log, clientName + " " + categoryName[(categoryName.LastIndexOf('.') + 1)..]);

        public void Dispose()
        {
        }
    }

    private sealed class TimedLogger(TimedLog log, string prefix) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            log.Add($"{prefix} {eventId.Name}: {formatter(state, exception)}{(exception is null ? "" : $" [{exception.GetType().Name}: {exception.Message.ReplaceLineEndings(" ")}]")}");
    }
}
