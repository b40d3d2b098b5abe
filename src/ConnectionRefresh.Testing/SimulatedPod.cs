using ConnectionRefresh.Testing.Internal;
using Microsoft.AspNetCore.Builder;

namespace ConnectionRefresh.Testing;

/// <summary>
/// One pod of a <see cref="SimulatedCluster"/>: a real Kestrel gRPC server on loopback with a name, a readiness flag
/// and counters. Also registered as a singleton in the pod's own services, so a user service can ask which pod it runs in.
/// </summary>
/// <remarks>
/// Thread-safe: counters are updated with <see cref="Interlocked"/>; state, readiness and the connection set change only
/// under the owning cluster's lock.
/// </remarks>
public sealed class SimulatedPod
{
    private readonly SimulatedCluster _cluster;
    private readonly PerSecondCounter _perSecond = new();
    private long _callsServed;
    private long _callsFailed;
    private long _callsActive;
    private long _connectionsAccepted;
    private int _openConnections;
    private long _firstCallTicks = -1;

    internal SimulatedPod(SimulatedCluster cluster, string name)
    {
        _cluster = cluster;
        Name = name;
    }

    /// <summary>The pod's name, <c>{prefix}-{n}</c>; also the <c>instance</c> of every Greeter reply.</summary>
    public string Name { get; }

    /// <summary>
    /// The pod's own address (<c>http://127.0.0.1:port</c>), bypassing the ClusterIP. In <see cref="KubeProxyMode.Iptables"/>
    /// mode it is an address inside the cluster's network namespace and cannot be reached from the test process.
    /// </summary>
    public Uri Address { get; internal set; } = null!;

    /// <summary>The pod's life-cycle state.</summary>
    public SimulatedPodState State { get; internal set; }

    /// <summary>Whether the ClusterIP sends new connections to this pod.</summary>
    public bool IsReady { get; internal set; }

    /// <summary>
    /// Whether the pod would pass its readiness probe, published as the EndpointSlice condition <c>serving</c>: while it runs,
    /// the same as <see cref="IsReady"/>; while it stops gracefully, true until its server stops listening (after
    /// <see cref="SimulatedClusterOptions.PreStopDelay"/>) unless it had been made not ready before. Set under the cluster's lock.
    /// </summary>
    internal bool IsServing => State switch
    {
        SimulatedPodState.Running => IsReady,
        SimulatedPodState.Terminating => ServingWhileTerminating,
        _ => false,
    };

    /// <summary>See <see cref="IsServing"/>: set when a graceful stop starts, cleared when the server stops listening; under the cluster's lock.</summary>
    internal bool ServingWhileTerminating { get; set; }

    /// <summary>Whether the pod was black-holed (see <see cref="SimulatedCluster.BlackHole"/>).</summary>
    public bool IsBlackHoled { get; internal set; }

    /// <summary>Calls (HTTP/2 requests) the pod received.</summary>
    public long CallsServed => Interlocked.Read(ref _callsServed);

    /// <summary>Calls that ended with a non-OK gRPC status (or HTTP status 400 or above) or were aborted.</summary>
    public long CallsFailed => Interlocked.Read(ref _callsFailed);

    /// <summary>
    /// Calls the pod has received and not finished now: running, or waiting for a slot when
    /// <see cref="SimulatedClusterOptions.MaxConcurrentCallsPerPod"/> is set (so it can exceed that limit).
    /// </summary>
    public long CallsActive => Interlocked.Read(ref _callsActive);

    /// <summary>TCP connections the pod accepted.</summary>
    public long ConnectionsAccepted => Interlocked.Read(ref _connectionsAccepted);

    /// <summary>TCP connections open on the pod now.</summary>
    public int OpenConnections => Volatile.Read(ref _openConnections);

    /// <summary>When the pod became ready, as time since the cluster started.</summary>
    public TimeSpan AddedAt { get; internal set; }

    /// <summary>
    /// When the pod last turned ready (time since the cluster started), like the <c>lastTransitionTime</c> of a Kubernetes
    /// pod's Ready condition: from here a rolling update counts how long it has been ready continuously. Meaningful only
    /// while <see cref="IsReady"/>; set under the cluster's lock whenever readiness turns on.
    /// </summary>
    internal TimeSpan ReadySince { get; set; }

    /// <summary>When the pod left the cluster (stopped or killed), or <see langword="null"/> while it is in it.</summary>
    public TimeSpan? RemovedAt { get; internal set; }

    /// <summary>When the pod received its first call (time since the cluster started), or <see langword="null"/>.</summary>
    public TimeSpan? FirstCallAt
    {
        get
        {
            var ticks = Interlocked.Read(ref _firstCallTicks);
            return ticks < 0 ? null : TimeSpan.FromTicks(ticks);
        }
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Name} ({State}{(IsReady ? ", ready" : "")}{(IsBlackHoled ? ", black-holed" : "")})";

    internal WebApplication? App { get; set; }

    /// <summary>
    /// Whether the pod ever turned Running (set once, under the cluster's lock). A pod stopped or killed while starting never
    /// does: readers (<see cref="SimulatedCluster.Pods"/>, the timeline, the summary, the mirrored endpoints) never see it.
    /// </summary>
    internal bool HasStarted { get; set; }

    /// <summary>The cluster's template version when the pod was created; a rolling update replaces the pods of older ones.</summary>
    internal int Generation { get; init; }

    internal System.Net.IPEndPoint? EndPoint { get; set; }

    /// <summary>The pod's address in the simulated network (see <see cref="SimulatedCluster.EnsureNetworkEndPoint"/>), or null; set under the cluster's lock.</summary>
    internal System.Net.IPEndPoint? NetworkEndPoint { get; set; }

    /// <summary>The listener behind <see cref="NetworkEndPoint"/>; closed when the pod leaves, unless it is black-holed.</summary>
    internal System.Net.Sockets.Socket? NetworkListener { get; set; }

    /// <summary>The pod's call capacity (<see cref="SimulatedClusterOptions.MaxConcurrentCallsPerPod"/>), or null.</summary>
    internal SemaphoreSlim? Capacity { get; init; }

    /// <summary>Cancelled to make a graceful stop hard (kill, dispose).</summary>
    internal CancellationTokenSource KillSwitch { get; } = new();

    /// <summary>Completed when <see cref="SimulatedCluster.AddPodAsync"/> is done with this pod (started, failed or stopped again).</summary>
    internal TaskCompletionSource StartCompleted { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>The single stop of the pod's server; set under the cluster's lock.</summary>
    internal Task? StopTask { get; set; }

    /// <summary>
    /// One task per connection the pod's server has open, completed once the pod's connection middleware has counted it
    /// closed (<see cref="OnConnectionClosed"/>); guarded by the cluster's lock. Disposal awaits them: Kestrel's stop gives
    /// up waiting for aborted connections after 1 s, and they may still be running then on a loaded machine.
    /// </summary>
    internal HashSet<Task> ServerConnections { get; } = [];

    /// <summary>Proxied connections pinned to this pod; guarded by the cluster's lock.</summary>
    internal HashSet<ProxiedConnection> Connections { get; } = [];

    internal IReadOnlyList<long> CallsPerSecond() => _perSecond.Snapshot();

    internal void OnCallStarted()
    {
        var now = _cluster.Elapsed();
        Interlocked.Increment(ref _callsServed);
        Interlocked.Increment(ref _callsActive);
        Interlocked.CompareExchange(ref _firstCallTicks, now.Ticks, -1);
        _perSecond.Increment((int)Math.Max(0, now.TotalSeconds));
    }

    internal void OnCallCompleted(bool succeeded)
    {
        Interlocked.Decrement(ref _callsActive);
        if (!succeeded)
        {
            Interlocked.Increment(ref _callsFailed);
        }
    }

    internal void OnConnectionOpened()
    {
        Interlocked.Increment(ref _connectionsAccepted);
        Interlocked.Increment(ref _openConnections);
    }

    internal void OnConnectionClosed() => Interlocked.Decrement(ref _openConnections);
}
