using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using ConnectionRefresh.Tests.Infrastructure;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using Microsoft.Extensions.Time.Testing;

namespace ConnectionRefresh.Tests.Integration;

/// <summary>
/// A server that closes a connection gracefully (GOAWAY NO_ERROR, running calls finish: Kestrel at shutdown, a server-side
/// MaxConnectionAge) retires it normally: no call fails, and nothing reports a lost connection.
/// </summary>
public sealed class GracefulGoAwayTests
{
    // shutdown: the pod's Kestrel stops (GOAWAY to every connection, waits for running calls); otherwise the connection's
    // RequestClose(), as ConnectionRefresh.Server's MaxConnectionAge closes one. Each call kind, direct and through the ClusterIP.
    public static TheoryData<bool, string, bool> Cases()
    {
        var data = new TheoryData<bool, string, bool>();
        foreach (var shutdown in new[] { false, true })
        {
            foreach (var kind in new[] { "unary", "stream", "chat" })
            {
                foreach (var viaClusterIp in new[] { false, true })
                {
                    data.Add(shutdown, kind, viaClusterIp);
                }
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Call_ServerClosesTheConnectionGracefully_FinishesAndNoConnectionFailureIsReported(bool shutdown, string kind, bool viaClusterIp)
    {
        // The Greeter's delay runs on this clock: the call is held until the test advances it.
        var clock = new FakeTimeProvider();
        var connections = new ConcurrentQueue<ConnectionContext>();
        await using var cluster = await SimulatedCluster.StartAsync(new()
        {
            Replicas = 1,
            TimeProvider = clock,
            ConfigureListen = listen => listen.Use(next => connection =>
            {
                connections.Enqueue(connection);
                return next(connection);
            }),
        });
        var pod = cluster.Pods[0];
        using var host = GreeterClientHost.Create(viaClusterIp ? cluster.Address : pod.Address, b => b.AddConnectionRefresh(), services => services.AddFakeLogging());
        using var retired = new MetricCollector<long>(host.Services.GetRequiredService<IMeterFactory>(), "ConnectionRefresh", "connectionrefresh.connections.retired");

        var deadline = DateTime.UtcNow.AddSeconds(60);
        Func<Task<string>> finish;
        if (kind == "unary")
        {
            var unary = host.Client.SayHelloAsync(new HelloRequest { Name = "held", DelayMs = 1_000 }, deadline: deadline);
            finish = async () => (await unary.ResponseAsync).Instance;
        }
        else if (kind == "stream")
        {
            var stream = host.Client.StreamHellos(new StreamRequest { Name = "held", Count = 2, DelayMs = 1_000 }, deadline: deadline);
            Assert.True(await stream.ResponseStream.MoveNext(CancellationToken.None));
            finish = async () =>
            {
                Assert.True(await stream.ResponseStream.MoveNext(CancellationToken.None));
                var last = stream.ResponseStream.Current.Instance;
                Assert.False(await stream.ResponseStream.MoveNext(CancellationToken.None));
                return last;
            };
        }
        else
        {
            var chat = host.Client.Chat(deadline: deadline);
            await chat.RequestStream.WriteAsync(new HelloRequest { Name = "first" });
            Assert.True(await chat.ResponseStream.MoveNext(CancellationToken.None));
            await chat.RequestStream.WriteAsync(new HelloRequest { Name = "held", DelayMs = 1_000 });
            finish = async () =>
            {
                Assert.True(await chat.ResponseStream.MoveNext(CancellationToken.None));
                var last = chat.ResponseStream.Current.Instance;
                await chat.RequestStream.CompleteAsync();
                Assert.False(await chat.ResponseStream.MoveNext(CancellationToken.None));
                return last;
            };
        }

        await Poll.UntilAsync(() => pod.CallsActive == 1, "the call to run on the pod");
        var connection = Assert.Single(connections);
        var lifetime = connection.Features.Get<IConnectionLifetimeNotificationFeature>()!;
        Task stopped = Task.CompletedTask;
        if (shutdown)
        {
            stopped = cluster.StopPodAsync(pod);
            await Poll.UntilAsync(() => lifetime.ConnectionClosedRequested.IsCancellationRequested, "Kestrel to close the connection");
        }
        else
        {
            lifetime.RequestClose();
            // Kestrel's first GOAWAY (last stream id 2^31-1) still admits calls sent before the client saw it; once it has,
            // a new call opens a new connection, while the first call is still held.
            await Poll.UntilAsync(
                async () =>
                {
                    await host.Client.SayHelloAsync(new HelloRequest { Name = "next" }, deadline: DateTime.UtcNow.AddSeconds(60));
                    return pod.ConnectionsAccepted == 2;
                },
                "a new call to open a new connection");
        }

        // The held delay may not have started its timer yet when the clock first moves (the pod counts a call before the
        // Greeter runs): move it until the call ends. Extra advances only shorten later delays, of which there are none.
        var finished = finish();
        await Poll.UntilAsync(
            () =>
            {
                clock.Advance(TimeSpan.FromSeconds(1));
                return finished.IsCompleted;
            },
            "the held call to finish");
        Assert.Equal(pod.Name, await finished);
        await Poll.WithTimeout(stopped, "the pod to stop");
        await Poll.UntilAsync(() => connection.ConnectionClosed.IsCancellationRequested, "the closed connection to end");

        // No "lost a connection" warning (event 3), no warning at all, and no connection_failure retirement (the only way
        // to the slot's failed-slot penalty): the client's SocketsHttpHandler moved to a new connection by itself.
        var logs = host.Services.GetRequiredService<FakeLogCollector>().GetSnapshot().Where(r => r.Category == "ConnectionRefresh").ToList();
        Assert.DoesNotContain(logs, r => r.Level >= LogLevel.Warning);
        Assert.DoesNotContain(retired.GetMeasurementSnapshot(), m => (string?)m.Tags["reason"] == "connection_failure");
    }
}
