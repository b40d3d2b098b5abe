namespace ConnectionRefresh.Testing;

/// <summary>The life-cycle state of a <see cref="SimulatedPod"/>.</summary>
public enum SimulatedPodState
{
    /// <summary>
    /// Starting: its server does not listen yet; not listed in <see cref="SimulatedCluster.Pods"/> until it has started. A pod
    /// stopped or killed while starting is never listed.
    /// </summary>
    Pending = 0,

    /// <summary>Serving; receives new connections while <see cref="SimulatedPod.IsReady"/> is true.</summary>
    Running = 1,

    /// <summary>
    /// Stopping gracefully: not ready; still serving during <see cref="SimulatedClusterOptions.PreStopDelay"/>, then GOAWAY sent and
    /// running calls finishing.
    /// </summary>
    Terminating = 2,

    /// <summary>Stopped gracefully; no longer in <see cref="SimulatedCluster.Pods"/>.</summary>
    Terminated = 3,

    /// <summary>Killed: its connections were reset; no longer in <see cref="SimulatedCluster.Pods"/>.</summary>
    Killed = 4,
}
