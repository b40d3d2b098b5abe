using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Jobs;

namespace ConnectionRefresh.Benchmarks.Micro;

internal static class MicroConfig
{
    /// <summary>
    /// The quick job (default): 1 launch, 3 warm-up and 10 measured iterations of ~0.5 s each, about 15 s per
    /// benchmark. <paramref name="full"/> uses BenchmarkDotNet's default job (adaptive, several minutes per benchmark).
    /// </summary>
    public static IConfig Create(bool full, string artifacts)
    {
        var job = full
            ? Job.Default.WithId("Full")
            : Job.Default.WithId("Quick").WithLaunchCount(1).WithWarmupCount(3).WithIterationCount(10);
        return DefaultConfig.Instance
            .AddJob(job.AsDefault())
            .AddDiagnoser(MemoryDiagnoser.Default)
            .AddColumn(StatisticColumn.P95)
            .HideColumns(Column.Job, Column.LaunchCount, Column.WarmupCount, Column.IterationCount)
            .WithArtifactsPath(artifacts)
            .WithOptions(ConfigOptions.JoinSummary);
    }
}
