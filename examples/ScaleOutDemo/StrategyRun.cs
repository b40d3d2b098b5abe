using System.Diagnostics;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Grpc.Core;
using ScaleOutDemo.Strategies;

namespace ScaleOutDemo;

/// <summary>
/// One strategy's run: its own cluster, its client replicas and their callers, and the scripted events.
/// Thread-safe: counters use Interlocked, per-second series and latencies are guarded by one lock.
/// </summary>
internal sealed class StrategyRun(IClientStrategy strategy, DemoOptions options, Scenario scenario) : IAsyncDisposable
{
    /// <summary>Each caller stops after this many calls even if time remains: every load loop is bounded in count and time.</summary>
    private const int MaxCallsPerWorker = 500_000;

    /// <summary>Per-call deadline, as a real service would set one.</summary>
    private static readonly TimeSpan CallDeadline = TimeSpan.FromSeconds(2);

    /// <summary>Pause after a failed call before the next one (a caller's retry back-off), so failing loops do not spin.</summary>
    private static readonly TimeSpan FailureBackoff = TimeSpan.FromMilliseconds(50);

    private readonly Lock _gate = new();
    private readonly List<long> _okPerSecond = [];
    private readonly List<long> _failedPerSecond = [];
    private readonly List<float> _latenciesMs = [];
    private readonly List<IClientReplica> _replicas = [];
    private IAsyncDisposable? _environment;
    private long _ok;
    private long _failed;

    public IClientStrategy Strategy => strategy;

    public SimulatedCluster Cluster { get; private set; } = null!;

    public long Ok => Interlocked.Read(ref _ok);

    public long Failed => Interlocked.Read(ref _failed);

    public TimeSpan LoadStartedAt { get; private set; }

    public TimeSpan LoadEndedAt { get; private set; }

    public string? BlackHoledPod { get; private set; }

    public Exception? ScriptError { get; private set; }

    public async Task StartClusterAsync()
    {
        var clusterOptions = new SimulatedClusterOptions
        {
            Replicas = options.Pods,
            ProxyMode = options.KubeProxy ? KubeProxyMode.Iptables : KubeProxyMode.Userspace,
            TerminationGracePeriod = TimeSpan.FromSeconds(10),
            // A preStop sleep, as a real Deployment has, so clients that resolve pods themselves (k8s-resolver) drop a stopping
            // pod before it stops listening. Real clusters sleep 5–15 s for propagation across nodes; here the endpoint change
            // reaches the ClusterIP at once and the resolvers' watches within milliseconds, so 1 s is a wide margin even on a
            // loaded machine, and short enough that the rolling update still ends before the black-hole in a 10 s run.
            PreStopDelay = TimeSpan.FromSeconds(1),
            MaxConcurrentCallsPerPod = options.PodCapacity,
        };
        strategy.ConfigureCluster(clusterOptions);
        Cluster = await SimulatedCluster.StartAsync(clusterOptions);
        _environment = await strategy.StartEnvironmentAsync(Cluster);
    }

    /// <summary>Runs load and script together until the scenario's duration has passed since <paramref name="clock"/> started.</summary>
    public async Task RunAsync(Stopwatch clock)
    {
        for (var i = 0; i < options.Clients; i++)
        {
            _replicas.Add(strategy.CreateReplica(Cluster));
        }

        using var stop = new CancellationTokenSource();
        LoadStartedAt = Cluster.Elapsed();
        Cluster.Mark("load started");
        var workers = _replicas
            .SelectMany((replica, r) => Enumerable.Range(0, options.WorkersPerClient).Select(w => Task.Run(() => WorkerAsync(replica, $"c{r}w{w}", stop.Token))))
            .ToList();
        var script = RunScriptAsync(clock);

        var remaining = scenario.Duration - clock.Elapsed;
        if (remaining > TimeSpan.Zero)
        {
            await Task.Delay(remaining);
        }

        LoadEndedAt = Cluster.Elapsed();
        Cluster.Mark("load stopped");
        await stop.CancelAsync();
        await Task.WhenAll(workers);
        await script;
    }

    public RunStatistics Statistics()
    {
        lock (_gate)
        {
            return new RunStatistics([.. _okPerSecond], [.. _failedPerSecond], [.. _latenciesMs]);
        }
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var replica in _replicas)
        {
            replica.Dispose();
        }

        if (_environment is not null)
        {
            await _environment.DisposeAsync();
        }

        if (Cluster is not null)
        {
            await Cluster.DisposeAsync();
        }
    }

    private async Task WorkerAsync(IClientReplica replica, string name, CancellationToken stop)
    {
        var request = new HelloRequest { Name = name, DelayMs = options.WorkMs };
        for (var i = 0; i < MaxCallsPerWorker && !stop.IsCancellationRequested; i++)
        {
            var started = Stopwatch.GetTimestamp();
            bool ok;
            try
            {
                await replica.SayHelloAsync(request, new CallOptions(deadline: DateTime.UtcNow + CallDeadline, cancellationToken: stop));
                ok = true;
            }
            catch (RpcException) when (stop.IsCancellationRequested)
            {
                return; // Cut by the end of the run: not counted.
            }
            catch (RpcException)
            {
                ok = false;
            }

            Record(ok, Stopwatch.GetElapsedTime(started));
            if (!ok)
            {
                try
                {
                    await Task.Delay(FailureBackoff, stop);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    private void Record(bool ok, TimeSpan latency)
    {
        var second = (int)Math.Max(0, Cluster.Elapsed().TotalSeconds);
        Interlocked.Increment(ref ok ? ref _ok : ref _failed);
        lock (_gate)
        {
            var series = ok ? _okPerSecond : _failedPerSecond;
            while (series.Count <= second)
            {
                series.Add(0);
            }

            series[second]++;
            _latenciesMs.Add((float)latency.TotalMilliseconds);
        }
    }

    private async Task RunScriptAsync(Stopwatch clock)
    {
        try
        {
            await DelayUntilAsync(clock, scenario.ScaleOutAt);
            await Cluster.ScaleAsync(options.Pods * 2);

            await DelayUntilAsync(clock, scenario.RollingUpdateAt);
            await Cluster.RollingUpdateAsync(scenario.RollingStep);

            await DelayUntilAsync(clock, scenario.BlackHoleAt);
            // The busiest pod (most calls in the last two whole seconds) dies: the worst case, the same rule for every strategy.
            var second = (int)Cluster.Elapsed().TotalSeconds;
            var recent = Cluster.Summary().Pods.ToDictionary(p => p.Name, p => p.CallsPerSecond.Skip(second - 2).Take(2).Sum());
            var victim = Cluster.ReadyPods.OrderByDescending(p => recent[p.Name]).ThenBy(p => p.Name, StringComparer.Ordinal).First();
            BlackHoledPod = victim.Name;
            Cluster.BlackHole(victim);

            await DelayUntilAsync(clock, scenario.EndpointRemovalAt);
            await Cluster.SetReadyAsync(victim, false);
        }
        catch (Exception ex) when (ex is InvalidOperationException or OperationCanceledException or ObjectDisposedException)
        {
            ScriptError = ex;
        }
    }

    private static async Task DelayUntilAsync(Stopwatch clock, TimeSpan at)
    {
        var wait = at - clock.Elapsed;
        if (wait > TimeSpan.Zero)
        {
            await Task.Delay(wait);
        }
    }
}

/// <summary>Client-side observations of one run.</summary>
internal sealed record RunStatistics(long[] OkPerSecond, long[] FailedPerSecond, float[] LatenciesMs);
