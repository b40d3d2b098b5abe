namespace ScaleOutDemo;

/// <summary>When each event of the story happens, as fractions of the run, so a shorter run tells the same story.</summary>
internal sealed class Scenario(TimeSpan duration)
{
    public TimeSpan Duration => duration;

    public TimeSpan ScaleOutAt => duration * 0.15;

    public TimeSpan RollingUpdateAt => duration * 0.45;

    /// <summary>Pause between replacements of the rolling update (like minReadySeconds): 2.5 % of the run.</summary>
    public TimeSpan RollingStep => duration * 0.025;

    public TimeSpan BlackHoleAt => duration * 0.72;

    /// <summary>
    /// When the black-holed pod leaves the endpoints. A real cluster needs ~40 s or more (node monitor grace period); the demo
    /// compresses it to 8 % of the run.
    /// </summary>
    public TimeSpan EndpointRemovalAt => duration * 0.80;
}
