namespace ConnectionRefresh.Testing.Internal;

/// <summary>The cluster's <see cref="SimulatedClusterOptions.TimeProvider"/>, for the pods' own services only. Immutable.</summary>
internal sealed record PodClock(TimeProvider TimeProvider);
