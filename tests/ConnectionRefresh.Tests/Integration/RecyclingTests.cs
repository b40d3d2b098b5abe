using System.Diagnostics.Metrics;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using ConnectionRefresh.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;

namespace ConnectionRefresh.Tests.Integration;

public sealed class RecyclingTests
{
    [Fact]
    public async Task MaxRequestsPerConnection_UnderConcurrentLoad_OpensOneServerConnectionPerBudgetWithoutFailures()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var host = GreeterClientHost.WithRefresh(cluster.Address, o => o.MaxRequestsPerConnection = 20);
        using var retired = new MetricCollector<long>(host.Services.GetRequiredService<IMeterFactory>(), "ConnectionRefresh", "connectionrefresh.connections.retired");

        var result = await Load.RunAsync([host.Client], concurrency: 4, TimeSpan.FromMinutes(2), maxCalls: 100);

        Assert.Empty(result.Failures);
        Assert.Equal(400, result.Succeeded);
        // The budget is exact: 400 calls / 20 per generation = 20 generations, each of which really opened a connection
        // on the server. A generation's SocketsHttpHandler may rarely open a second TCP connection (it injects one when a
        // request finds its only connection momentarily unavailable; seen once in a full, parallel CI run): the
        // budget counts calls per generation, as documented, so the TCP count may exceed it by such a spare.
        Assert.Equal(20, retired.GetMeasurementSnapshot().Where(m => (string?)m.Tags["reason"] == "request_count").Sum(m => m.Value));
        Assert.InRange(cluster.Pods[0].ConnectionsAccepted, 20, 22);
    }

    [Fact]
    public async Task AggressiveRecycling_ThousandsOfCalls_LeavesNoConnectionBehind()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var host = GreeterClientHost.WithRefresh(cluster.Address, o =>
        {
            o.MaxRequestsPerConnection = 5;
            o.ConnectionsPerEndpoint = 2;
        });

        var result = await Load.RunAsync([host.Client], concurrency: 4, TimeSpan.FromMinutes(2), maxCalls: 500);

        Assert.Empty(result.Failures);
        var pod = cluster.Pods[0];
        // 2,000 calls at 5 per connection = 400 generations; slot 0's first budget is staggered to 3 calls and each
        // slot may end on a partly used connection, hence at most 402. A generation's SocketsHttpHandler may rarely
        // open a spare TCP connection (see the test above; seen once in a full CI run here: 403), so the TCP count
        // may exceed that by a few; the budget's exactness is the test above's.
        Assert.InRange(pod.ConnectionsAccepted, 400, 410);
        // Every retired handler is disposed after its last call, closing its connection: only the two current
        // connections stay open. Closing crosses the proxy asynchronously, hence the poll (10 s: generous).
        await Poll.UntilAsync(() => pod.OpenConnections <= 2, "only the two current connections open", TimeSpan.FromSeconds(10));
    }

    [Fact]
    public async Task ConnectionsPerEndpoint_Four_ReachesSeveralPodsFromTheStart()
    {
        // A fixed seed makes the balancer's picks repeatable: the first four connections land on more than one pod.
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 4, RandomSeed = 7 });
        using var host = GreeterClientHost.WithRefresh(cluster.Address, o => o.ConnectionsPerEndpoint = 4);

        var instances = new HashSet<string>();
        for (var i = 0; i < 40; i++)
        {
            instances.Add((await host.Client.SayHelloAsync(new HelloRequest { Name = "k" })).Instance);
        }

        Assert.Equal(4, cluster.Pods.Sum(p => p.ConnectionsAccepted));
        var podsWithConnections = cluster.Pods.Where(p => p.ConnectionsAccepted > 0).Select(p => p.Name).ToHashSet();
        Assert.True(podsWithConnections.SetEquals(instances));
        Assert.InRange(instances.Count, 2, 4);
    }
}
