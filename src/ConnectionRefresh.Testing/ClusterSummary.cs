namespace ConnectionRefresh.Testing;

/// <summary>
/// A snapshot of what a <see cref="SimulatedCluster"/> has seen since it started: calls per pod, per-second counts,
/// connections and the event timeline. Call counts are server-side: a call counts for the pod that received it.
/// </summary>
public sealed class ClusterSummary
{
    internal ClusterSummary(TimeSpan elapsed, IReadOnlyList<PodSummary> pods, IReadOnlyList<ClusterEvent> events)
    {
        Elapsed = elapsed;
        Pods = pods;
        Events = events;
        TotalCalls = pods.Sum(p => p.CallsServed);
        FailedCalls = pods.Sum(p => p.CallsFailed);
        MaxCallsPerPod = pods.Count == 0 ? 0 : pods.Max(p => p.CallsServed);
        MeanCallsPerPod = pods.Count == 0 ? 0 : pods.Average(p => (double)p.CallsServed);
    }

    /// <summary>Time since the cluster started.</summary>
    public TimeSpan Elapsed { get; }

    /// <summary>Every pod that ever ran in the cluster, in order of creation (removed pods included).</summary>
    public IReadOnlyList<PodSummary> Pods { get; }

    /// <summary>The timeline, in order.</summary>
    public IReadOnlyList<ClusterEvent> Events { get; }

    /// <summary>Calls received by all pods.</summary>
    public long TotalCalls { get; }

    /// <summary>
    /// Calls that ended, as the pods saw them, with a non-OK gRPC status or an aborted request. Calls that never reached
    /// a pod (a connection reset by the ClusterIP, a black-holed connection) are not counted here: count those on the client.
    /// </summary>
    public long FailedCalls { get; }

    /// <summary>The largest number of calls a single pod received.</summary>
    public long MaxCallsPerPod { get; }

    /// <summary>The mean number of calls per pod, over <see cref="Pods"/>.</summary>
    public double MeanCallsPerPod { get; }

    /// <summary><see cref="MaxCallsPerPod"/> / <see cref="MeanCallsPerPod"/>: 1 is perfectly even; 0 when there were no calls.</summary>
    public double MaxToMeanLoad => MeanCallsPerPod == 0 ? 0 : MaxCallsPerPod / MeanCallsPerPod;
}

/// <summary>What one pod saw. Part of a <see cref="ClusterSummary"/>.</summary>
public sealed class PodSummary
{
    internal PodSummary(SimulatedPod pod, long totalCalls)
    {
        Name = pod.Name;
        State = pod.State;
        CallsServed = pod.CallsServed;
        CallsFailed = pod.CallsFailed;
        ConnectionsAccepted = pod.ConnectionsAccepted;
        Share = totalCalls == 0 ? 0 : (double)pod.CallsServed / totalCalls;
        AddedAt = pod.AddedAt;
        RemovedAt = pod.RemovedAt;
        FirstCallAt = pod.FirstCallAt;
        CallsPerSecond = pod.CallsPerSecond();
    }

    /// <summary>The pod's name.</summary>
    public string Name { get; }

    /// <summary>The pod's state when the summary was taken.</summary>
    public SimulatedPodState State { get; }

    /// <summary>Calls the pod received.</summary>
    public long CallsServed { get; }

    /// <summary>Calls that ended with a non-OK status or were aborted, as the pod saw them.</summary>
    public long CallsFailed { get; }

    /// <summary>TCP connections the pod accepted.</summary>
    public long ConnectionsAccepted { get; }

    /// <summary>This pod's share of all calls the cluster received, 0–1.</summary>
    public double Share { get; }

    /// <summary>When the pod became ready, as time since the cluster started.</summary>
    public TimeSpan AddedAt { get; }

    /// <summary>When the pod left the cluster (stopped or killed), or <see langword="null"/>.</summary>
    public TimeSpan? RemovedAt { get; }

    /// <summary>When the pod received its first call, or <see langword="null"/> if it never did.</summary>
    public TimeSpan? FirstCallAt { get; }

    /// <summary>Time from ready to first call, or <see langword="null"/> if the pod never received a call.</summary>
    public TimeSpan? TimeToFirstCall => FirstCallAt - AddedAt;

    /// <summary>Calls received per second: index <c>i</c> counts calls that arrived in second <c>i</c> after the cluster started.</summary>
    public IReadOnlyList<long> CallsPerSecond { get; }
}
