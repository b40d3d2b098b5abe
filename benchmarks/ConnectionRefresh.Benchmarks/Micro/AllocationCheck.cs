using System.Diagnostics;
using System.Globalization;
using ConnectionRefresh.Benchmarks.Infrastructure;
using ConnectionRefresh.Protos;

namespace ConnectionRefresh.Benchmarks.Micro;

/// <summary>
/// The <c>alloc</c> command: allocated bytes per sequential unary call for each strategy, in seconds rather than
/// minutes (for working on the call path). Bytes are counted process-wide, with the server in another process.
/// </summary>
internal static class AllocationCheck
{
    private static readonly HelloRequest Request = new() { Name = "bench" };

    public static async Task<int> RunAsync(IReadOnlyList<string> args)
    {
        var types = args.Contains("--types");
        args = [.. args.Where(a => a != "--types")];
        var calls = args.Count > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 20_000;
        var only = args.Skip(1).Select(Enum.Parse<Strategy>).ToArray();
        using var sampler = types ? new AllocationSampler() : null;
        using var server = await ServerProcess.StartAsync();
        Strategy[] strategies =
        [
            Strategy.BareChannel, Strategy.GrpcClientDefaults, Strategy.GrpcClientNoLoggers, Strategy.Refresh1, Strategy.Refresh1DefaultLogger,
            Strategy.Refresh4, Strategy.Refresh1Recycle1000,
        ];
        foreach (var strategy in only.Length > 0 ? only : strategies)
        {
            var target = GreeterTarget.Create(strategy, server.H2c, null);
            await using (target)
            {
                for (var i = 0; i < 2_000; i++)
                {
                    await target.CallAsync(Request);
                }

                GC.Collect();
                sampler?.Bytes.Clear();
                sampler?.Enabled = true;
                var before = GC.GetTotalAllocatedBytes(precise: true);
                var start = Stopwatch.GetTimestamp();
                for (var i = 0; i < calls; i++)
                {
                    await target.CallAsync(Request);
                }

                var elapsed = Stopwatch.GetElapsedTime(start);
                var bytes = (GC.GetTotalAllocatedBytes(precise: true) - before) / (double)calls;
                sampler?.Enabled = false;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{strategy.Label(),-45} {bytes,8:N0} B/call {elapsed.TotalMicroseconds / calls,8:N1} µs/call"));
                if (sampler is not null)
                {
                    var total = sampler.Bytes.Values.Sum();
                    foreach (var (type, sampled) in sampler.Bytes.OrderByDescending(p => p.Value).Take(25))
                    {
                        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"    {sampled * bytes / total,7:N0} B  {type}"));
                    }
                }
            }
        }

        return 0;
    }
}
