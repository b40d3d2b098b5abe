namespace ConnectionRefresh.Testing;

/// <summary>What happened in a <see cref="ClusterEvent"/>.</summary>
public enum ClusterEventKind
{
    /// <summary>A pod started and became ready.</summary>
    PodStarted = 0,

    /// <summary>A pod's readiness changed (see <see cref="SimulatedCluster.SetReadyAsync"/>).</summary>
    PodReadinessChanged = 1,

    /// <summary>A graceful stop began: readiness off, then GOAWAY once <see cref="SimulatedClusterOptions.PreStopDelay"/> has passed.</summary>
    PodStopping = 2,

    /// <summary>A gracefully stopped pod exited.</summary>
    PodStopped = 3,

    /// <summary>A pod was killed: connections reset.</summary>
    PodKilled = 4,

    /// <summary>A pod was black-holed: bytes stopped flowing, nothing closed.</summary>
    PodBlackHoled = 5,

    /// <summary>A scale operation began.</summary>
    Scaled = 6,

    /// <summary>A rolling update began.</summary>
    RollingUpdateStarted = 7,

    /// <summary>A rolling update finished.</summary>
    RollingUpdateCompleted = 8,

    /// <summary>A user-defined mark (see <see cref="SimulatedCluster.Mark"/>).</summary>
    Mark = 9,
}

/// <summary>One entry of the cluster's timeline.</summary>
/// <param name="At">Time since the cluster started, measured with <see cref="SimulatedClusterOptions.TimeProvider"/>.</param>
/// <param name="Kind">What happened.</param>
/// <param name="Pod">The pod concerned, or <see langword="null"/> for cluster-wide events.</param>
/// <param name="Description">A short human-readable description.</param>
public sealed record ClusterEvent(TimeSpan At, ClusterEventKind Kind, string? Pod, string Description);
