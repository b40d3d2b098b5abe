using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;

namespace ConnectionRefresh.Testing;

/// <summary>
/// How a <see cref="SimulatedCluster"/> is built. Every pod is built from the same options.
/// <see cref="SimulatedCluster.StartAsync"/> copies and validates them once: changing this object afterwards has no effect
/// on a started cluster (the same object may be changed and used to start another one).
/// </summary>
public sealed class SimulatedClusterOptions
{
    /// <summary>
    /// Number of pods started by <see cref="SimulatedCluster.StartAsync"/>. Default 3. Range: 0 to 64, the most pods a cluster
    /// runs that are not terminating (a rolling update may run one more; terminating pods are not counted).
    /// </summary>
    public int Replicas { get; set; } = 3;

    /// <summary>
    /// How the ClusterIP balances new connections. Default <see cref="KubeProxyMode.Userspace"/> (works everywhere);
    /// <see cref="KubeProxyMode.Iptables"/> needs Linux and root (see <see cref="KubeProxySupport"/>).
    /// </summary>
    public KubeProxyMode ProxyMode { get; set; } = KubeProxyMode.Userspace;

    /// <summary>Prefix of pod names: pods are named <c>{prefix}-1</c>, <c>{prefix}-2</c>, … in order of creation. Default <c>greeter</c>.</summary>
    public string PodNamePrefix { get; set; } = "greeter";

    /// <summary>
    /// Whether each pod serves the <c>greet.Greeter</c> service from <c>protos/greeter.proto</c> (every reply names the pod
    /// in <c>instance</c>; <c>delay_ms</c> and <c>count</c> are honoured). Default <see langword="true"/>.
    /// </summary>
    public bool MapGreeter { get; set; } = true;

    /// <summary>
    /// Registers extra services in every pod (for example your own gRPC service implementation). Runs after the simulator's
    /// own registrations (<c>AddGrpc</c>, <see cref="SimulatedPod"/> as a singleton).
    /// Default none.
    /// </summary>
    public Action<IServiceCollection>? ConfigureServices { get; set; }

    /// <summary>Maps extra endpoints in every pod, e.g. <c>app.MapGrpcService&lt;MyService&gt;()</c>. Default none.</summary>
    public Action<WebApplication>? ConfigureApp { get; set; }

    /// <summary>
    /// Configures every pod's Kestrel endpoint (HTTP/2 without TLS on loopback), e.g. to add a connection middleware.
    /// Runs after the simulator's own connection counting. Default none.
    /// </summary>
    public Action<ListenOptions>? ConfigureListen { get; set; }

    /// <summary>
    /// Clock for the timeline, per-second counts and the Greeter's <c>delay_ms</c>. Default <see cref="TimeProvider.System"/>.
    /// Sockets always run in real time.
    /// </summary>
    public TimeProvider TimeProvider { get; set; } = TimeProvider.System;

    /// <summary>
    /// How long a graceful stop may take before connections are aborted, like Kubernetes'
    /// <c>terminationGracePeriodSeconds</c>: counted from the start of the stop, so <see cref="PreStopDelay"/> uses part of it,
    /// and running calls get what is left after the hook (at least 2 s, as the kubelet grants, or the whole period if it is
    /// shorter). Measured in real time. Default 30 seconds. Range: 0 to 1 hour.
    /// </summary>
    public TimeSpan TerminationGracePeriod { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// How long <see cref="SimulatedCluster.StopPodAsync"/> waits after taking a pod out of the endpoints before its server
    /// stops listening and sends GOAWAY, like a <c>preStop</c> hook running <c>sleep</c>: clients and the ClusterIP learn of
    /// the removal while the pod still serves its running calls, existing connections and new connections made to its own
    /// address. Measured with <see cref="TimeProvider"/>; a kill or disposing the cluster cuts it short.
    /// Default <see cref="TimeSpan.Zero"/> (the server stops at once). Range: 0 to <see cref="TerminationGracePeriod"/>
    /// (in Kubernetes the hook runs inside the grace period: running calls then get only the rest of it).
    /// </summary>
    public TimeSpan PreStopDelay { get; set; } = TimeSpan.Zero;

    /// <summary>
    /// Calls one pod runs at the same time, like the CPU of a pod with a limit: further calls wait in a queue, so an
    /// overloaded pod answers more slowly than an idle one. Calls count as served when they arrive.
    /// <see langword="null"/> (the default) means no limit. Range: 1 to 10,000.
    /// </summary>
    public int? MaxConcurrentCallsPerPod { get; set; }

    /// <summary>
    /// Whether a pod that <see cref="SimulatedCluster.StopPodAsync"/> or <see cref="SimulatedCluster.KillPodAsync"/> removes is
    /// replaced by a new one, as a Deployment's ReplicaSet keeps its replica count after a pod deletion or a lost node. The
    /// replacement starts at once, next to the leaving pod; nobody awaits it (poll <see cref="SimulatedCluster.ReadyPods"/>),
    /// and one whose start fails is not retried. Pods that <see cref="SimulatedCluster.ScaleAsync"/> removes are not replaced,
    /// and a rolling update replaces lost pods anyway. Default <see langword="false"/>: the cluster shrinks.
    /// </summary>
    public bool ReplaceRemovedPods { get; set; }

    /// <summary>
    /// Seed of the random pod choice of the <see cref="KubeProxyMode.Userspace"/> ClusterIP, for reproducible runs;
    /// <see langword="null"/> (the default) seeds it randomly. The kernel's choice in
    /// <see cref="KubeProxyMode.Iptables"/> mode cannot be seeded.
    /// </summary>
    public int? RandomSeed { get; set; }

    /// <summary>
    /// A copy taken once at start and then validated: a cluster never reads the caller's object again, so nothing it runs
    /// with can change after validation. Delegates and the <see cref="TimeProvider"/> are shared, not copied.
    /// </summary>
    internal SimulatedClusterOptions Snapshot() => (SimulatedClusterOptions)MemberwiseClone();

    internal void Validate()
    {
        if (Replicas is < 0 or > SimulatedCluster.MaxPods)
        {
            throw new ArgumentOutOfRangeException(nameof(Replicas), Replicas, $"Replicas must be between 0 and {SimulatedCluster.MaxPods}.");
        }

        if (TerminationGracePeriod < TimeSpan.Zero || TerminationGracePeriod > TimeSpan.FromHours(1))
        {
            throw new ArgumentOutOfRangeException(nameof(TerminationGracePeriod), TerminationGracePeriod, "TerminationGracePeriod must be between 0 and 1 hour.");
        }

        if (PreStopDelay < TimeSpan.Zero || PreStopDelay > TerminationGracePeriod)
        {
            throw new ArgumentOutOfRangeException(nameof(PreStopDelay), PreStopDelay, $"PreStopDelay must be between 0 and TerminationGracePeriod ({TerminationGracePeriod}).");
        }

        if (string.IsNullOrWhiteSpace(PodNamePrefix))
        {
            throw new ArgumentException("PodNamePrefix must not be empty.", nameof(PodNamePrefix));
        }

        if (MaxConcurrentCallsPerPod is < 1 or > 10_000)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxConcurrentCallsPerPod), MaxConcurrentCallsPerPod, "MaxConcurrentCallsPerPod must be between 1 and 10,000, or null.");
        }

        ArgumentNullException.ThrowIfNull(TimeProvider);
        if (!Enum.IsDefined(ProxyMode))
        {
            throw new ArgumentOutOfRangeException(nameof(ProxyMode), ProxyMode, "Unknown ProxyMode.");
        }
    }
}
