using System.Collections.Concurrent;
using System.Diagnostics;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Server.Tests.TestSupport;
using ConnectionRefresh.Testing;
using Grpc.Net.ClientFactory;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Xunit.Abstractions;

namespace ConnectionRefresh.Server.Tests.Integration;

/// <summary>
/// The problem the package exists for: plain <c>AddGrpcClient</c> clients (no client-side refresh) behind a
/// kube-proxy-like per-connection random balancer (<see cref="SimulatedCluster"/>). After a scale-out from 2 to 4 pods
/// the new pods get a fair share of the calls only because the servers rotate connections; no call fails.
/// </summary>
public sealed class ScaleOutTests(ITestOutputHelper output)
{
    private const int Clients = 16;

    [Fact]
    public async Task MaxConnectionAge_ScaleOutFrom2To4Pods_NewPodsGetFairShareAndNoCallFails()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions
        {
            Replicas = 2,
            ConfigureServices = services => services.AddServerConnectionAge(o =>
            {
                o.MaxConnectionAge = TimeSpan.FromSeconds(1);
                o.MaxConnectionAgeJitter = 0.1;
                o.MaxConnectionAgeGrace = TimeSpan.FromSeconds(30);
            }),
            ConfigureListen = listen => listen.UseServerConnectionAge(),
        });

        var services = new ServiceCollection();
        for (var i = 0; i < Clients; i++)
        {
            // One named client each: its own channel and connection, as separate client pods would have.
            services.AddGrpcClient<Greeter.GreeterClient>("client-" + i, o => o.Address = cluster.Address);
        }

        await using var provider = services.BuildServiceProvider();
        var factory = provider.GetRequiredService<GrpcClientFactory>();
        using var stop = new CancellationTokenSource();
        long succeeded = 0;
        var failures = new ConcurrentQueue<Exception>();
        var workers = Enumerable.Range(0, Clients).Select(i => Task.Run(async () =>
        {
            var client = factory.CreateClient<Greeter.GreeterClient>("client-" + i);
            // Bounded in count as well as by the stop signal; 10 ms per call keeps the 2-core machine usable.
            for (var n = 0; n < 10_000 && !stop.IsCancellationRequested; n++)
            {
                try
                {
                    await client.SayHelloAsync(new HelloRequest { Name = "c" + i, DelayMs = 10 });
                    Interlocked.Increment(ref succeeded);
                }
                catch (Exception ex)
                {
                    failures.Enqueue(ex);
                }
            }
        })).ToArray();

        try
        {
            await Poll.UntilAsync(() => Interlocked.Read(ref succeeded) >= 200, "calls flow to the first 2 pods");
            await cluster.ScaleAsync(4);
            var newPods = cluster.Pods.Skip(2).ToList();
            Assert.Equal(2, newPods.Count);

            // Let every connection opened before the scale-out reach its age (≤ 1.1 s) and close; calls are 10 ms.
            var settle = Stopwatch.StartNew();
            await Poll.UntilAsync(() => settle.Elapsed >= TimeSpan.FromSeconds(3), "connections opened before the scale-out rotated");

            // Measure over a window in which at least 64 connections were opened (each a uniform pick of 4 pods).
            var callsBefore = cluster.Pods.ToDictionary(p => p.Name, p => p.CallsServed);
            var connectionsBefore = cluster.Pods.Sum(p => p.ConnectionsAccepted);
            await Poll.UntilAsync(
                () => cluster.Pods.Sum(p => p.ConnectionsAccepted) - connectionsBefore >= 64,
                "64 more connections (rotations)",
                TimeSpan.FromSeconds(120));
            var window = cluster.Pods.ToDictionary(p => p.Name, p => p.CallsServed - callsBefore[p.Name]);

            var total = window.Values.Sum();
            var newShare = (double)newPods.Sum(p => window[p.Name]) / total;
            var report = string.Join(", ", window.Select(kv => $"{kv.Key}={kv.Value}"));
            output.WriteLine($"calls per pod after the scale-out: {report}; new pods' share {newShare:P0}");

            // Fair is 50 %. 64 uniform picks give the new pods fewer than 16 connections (25 %) with probability
            // ~1e-5, and calls follow connections, so ≥ 25 % cannot fail by chance; without rotation it would be 0 %.
            Assert.True(newShare >= 0.25, $"new pods got {newShare:P0} of {total} calls ({report})");
            Assert.All(newPods, p => Assert.True(window[p.Name] > 0, $"{p.Name} got no calls ({report})"));
        }
        finally
        {
            stop.Cancel();
            await Poll.WithTimeout(Task.WhenAll(workers), "the clients to stop");
        }

        Assert.True(failures.IsEmpty, $"{failures.Count} call(s) failed, first: {failures.FirstOrDefault()}");
        Assert.All(cluster.Pods, p => Assert.Equal(0, p.CallsFailed));
    }
}
