using System.Diagnostics.Metrics;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using ConnectionRefresh.Tests.Infrastructure;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;

namespace ConnectionRefresh.Tests.Integration;

/// <summary>Streams of every kind outlive several ages and request-count retirements, losing nothing.</summary>
public sealed class StreamingTests
{
    private const int Messages = 40;
    private const int GapMs = 100;

    [Fact]
    public async Task Streams_OutliveSeveralRetirements_DeliverEveryMessage()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 2 });
        using var host = GreeterClientHost.WithRefresh(cluster.Address, o =>
        {
            o.MaxConnectionAge = TimeSpan.FromSeconds(1);
            o.MaxRequestsPerConnection = 10;
            o.ConnectionsPerEndpoint = 2;
        });
        using var retired = new MetricCollector<long>(host.Services.GetRequiredService<IMeterFactory>(), "ConnectionRefresh", "connectionrefresh.connections.retired");
        var client = host.Client;
        var deadline = DateTime.UtcNow.AddMinutes(2);

        var serverStream = Task.Run(async () =>
        {
            using var call = client.StreamHellos(new StreamRequest { Name = "server", Count = Messages, DelayMs = GapMs }, deadline: deadline);
            var sequences = new List<int>();
            while (await call.ResponseStream.MoveNext())
            {
                sequences.Add(call.ResponseStream.Current.Sequence);
            }

            return sequences;
        });
        var clientStream = Task.Run(async () =>
        {
            using var call = client.CollectHellos(deadline: deadline);
            for (var i = 0; i < Messages; i++)
            {
                await call.RequestStream.WriteAsync(new HelloRequest { Name = "client" });
                await Task.Delay(GapMs); // pacing the stream, not synchronisation
            }

            await call.RequestStream.CompleteAsync();
            return (await call).Count;
        });
        var bidiStream = Task.Run(async () =>
        {
            using var call = client.Chat(deadline: deadline);
            var sequences = new List<int>();
            for (var i = 0; i < Messages; i++)
            {
                await call.RequestStream.WriteAsync(new HelloRequest { Name = "bidi", DelayMs = GapMs });
                Assert.True(await call.ResponseStream.MoveNext());
                sequences.Add(call.ResponseStream.Current.Sequence);
            }

            await call.RequestStream.CompleteAsync();
            Assert.False(await call.ResponseStream.MoveNext());
            return sequences;
        });
        // Unary load alongside drives request-count and age retirements while the streams run.
        var unary = Load.RunAsync([client], concurrency: 2, TimeSpan.FromSeconds(4));

        Assert.Equal(Enumerable.Range(0, Messages), await serverStream);
        Assert.Equal(Messages, await clientStream);
        Assert.Equal(Enumerable.Range(0, Messages), await bidiStream);
        Assert.Empty((await unary).Failures);
        // Each stream lasts ≥ 4 s against a 1 s age, and the unary load spends a 10-call budget in milliseconds.
        Assert.InRange(retired.GetMeasurementSnapshot().Sum(m => m.Value), 4, long.MaxValue);
    }

    [Fact]
    public async Task UnaryInFlight_ConnectionRetires_CompletesWhileNewCallsUseNewConnection()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var host = GreeterClientHost.WithRefresh(cluster.Address, o => o.MaxRequestsPerConnection = 2);
        var pod = cluster.Pods[0];

        var slow = host.Client.SayHelloAsync(new HelloRequest { Name = "slow", DelayMs = 3000 }).ResponseAsync;
        await host.Client.SayHelloAsync(new HelloRequest { Name = "budget" }); // second call: the budget is spent
        await host.Client.SayHelloAsync(new HelloRequest { Name = "new" });

        Assert.Equal(2, pod.ConnectionsAccepted);
        // Two loopback calls take milliseconds; the slow one sleeps 3 s on the server, ample on a loaded machine.
        Assert.False(slow.IsCompleted, "the slow call should still be running on the retired connection");
        Assert.Equal("Hello slow", (await slow).Message);
        // Its connection closes once it has ended; the close crosses the proxy asynchronously (10 s: generous for a
        // local close, and the poll ends as soon as it holds).
        await Poll.UntilAsync(() => pod.OpenConnections == 1, "the retired connection closed", TimeSpan.FromSeconds(10));
    }
}
