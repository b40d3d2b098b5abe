using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using ConnectionRefresh.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using Microsoft.Extensions.Time.Testing;

namespace ConnectionRefresh.Tests.Integration;

/// <summary>
/// When the server closes a connection gracefully (GOAWAY: its max connection age, RequestClose), SocketsHttpHandler dials
/// the next one inside the same generation. Its age and request budget count from that new connection, not from the closed
/// one; a new connection while an older one is still open (HTTP/1.1, many per handler) changes nothing.
/// </summary>
public sealed class ReplacedConnectionTests
{
    private const int AgeRestartedEvent = 7;

    [Fact]
    public async Task Age_ServerClosedTheConnectionGracefully_CountsFromTheConnectionThatReplacedIt()
    {
        await using var server = await GoAwayCluster.StartAsync();
        var clock = new FakeTimeProvider();
        using var host = Client(server.Pod.Address, clock, o =>
        {
            o.MaxConnectionAge = TimeSpan.FromSeconds(10);
            o.MaxConnectionAgeJitter = 0;
        });

        await Call(host);
        clock.Advance(TimeSpan.FromSeconds(6));
        await server.CloseFirstConnectionAsync(host);

        // 12 s after the generation began but 6 s after its connection opened: the connection is kept.
        clock.Advance(TimeSpan.FromSeconds(6));
        await Call(host);
        Assert.Equal(2, server.Pod.ConnectionsAccepted);

        // 10 s after the new connection opened (at 6 s): it is retired, so the restart did not make the age endless.
        clock.Advance(TimeSpan.FromSeconds(4));
        await Call(host);
        Assert.Equal(3, server.Pod.ConnectionsAccepted);
        Assert.Equal(["age"], host.RetiredReasons());
    }

    [Fact]
    public async Task RequestBudget_ServerClosedTheConnectionUnderARunningCall_CountsFromTheConnectionThatReplacedIt()
    {
        await using var server = await GoAwayCluster.StartAsync();
        using var host = Client(server.Pod.Address, new FakeTimeProvider(), o => o.MaxRequestsPerConnection = 10);

        // Half the budget spent on the first connection: counted from the generation's start, the budget would end 5
        // calls after the new connection opened.
        for (var i = 0; i < 4; i++)
        {
            await Call(host);
        }

        await server.CloseFirstConnectionAsync(host);

        // The new connection's budget of 10 counts the call that opened it and, as it may have been waiting for it too,
        // the held call still running on the old one then (the client cannot tell which connection a running call is on):
        // 8 more fit.
        for (var i = 0; i < 8; i++)
        {
            await Call(host);
        }

        Assert.Equal(2, server.Pod.ConnectionsAccepted);
        await Call(host);
        Assert.Equal(3, server.Pod.ConnectionsAccepted);
        Assert.Equal(["request_count"], host.RetiredReasons());
    }

    [Fact]
    public async Task Age_Http11ConnectionOpenedWhileAnotherIsOpen_StillCountsFromTheFirst()
    {
        // HTTP/1.1 opens a connection per concurrent request: a new one next to an open one is no replacement.
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var cluster = await SimulatedCluster.StartAsync(new()
        {
            Replicas = 1,
            MapGreeter = false,
            ConfigureListen = listen => listen.Protocols = HttpProtocols.Http1,
            ConfigureApp = app =>
            {
                app.MapGet("/hello", () => "hello");
                app.MapGet("/held", async () =>
                {
                    await gate.Task;
                    return "held";
                });
            },
        });
        var pod = cluster.Pods[0];
        var clock = new FakeTimeProvider();
        var services = new ServiceCollection();
        services.AddMetrics();
        services.AddSingleton<TimeProvider>(clock);
        services.AddHttpClient("plain", c => c.BaseAddress = pod.Address).AddConnectionRefresh(o =>
        {
            o.MaxConnectionAge = TimeSpan.FromSeconds(10);
            o.MaxConnectionAgeJitter = 0;
        });
        using var provider = services.BuildServiceProvider();
        using var retired = new MetricCollector<long>(provider.GetRequiredService<IMeterFactory>(), "ConnectionRefresh", "connectionrefresh.connections.retired");
        var http = provider.GetRequiredService<IHttpClientFactory>().CreateClient("plain");

        var first = http.GetStringAsync("/held");
        await Poll.UntilAsync(() => pod.CallsActive == 1, "the first request to hold its connection");
        clock.Advance(TimeSpan.FromSeconds(6));
        Assert.Equal("hello", await http.GetStringAsync("/hello"));
        Assert.Equal(2, pod.ConnectionsAccepted);
        gate.SetResult();
        Assert.Equal("held", await first);

        // 10 s after the first connection: both are retired with their generation, though the second is 4 s old.
        clock.Advance(TimeSpan.FromSeconds(4));
        Assert.Equal("hello", await http.GetStringAsync("/hello"));
        Assert.Equal(3, pod.ConnectionsAccepted);
        Assert.Equal("age", Assert.Single(retired.GetMeasurementSnapshot()).Tags["reason"]);
    }

    private static Task Call(ClientHost host) => host.Client.SayHelloAsync(new HelloRequest { Name = "call" }, deadline: DateTime.UtcNow.AddSeconds(60)).ResponseAsync;

    private static ClientHost Client(Uri address, FakeTimeProvider clock, Action<ConnectionRefreshOptions> configure)
    {
        var host = GreeterClientHost.Create(address, b => b.AddConnectionRefresh(configure), services =>
        {
            services.AddSingleton<TimeProvider>(clock);
            services.AddFakeLogging();
            services.AddLogging(logging => logging.SetMinimumLevel(LogLevel.Debug));
        });
        return new ClientHost(host);
    }

    /// <summary>A client with its clock, logs and retired-connection metric.</summary>
    private sealed class ClientHost : IDisposable
    {
        private readonly GreeterClientHost _host;
        private readonly MetricCollector<long> _retired;

        public ClientHost(GreeterClientHost host)
        {
            _host = host;
            _retired = new MetricCollector<long>(host.Services.GetRequiredService<IMeterFactory>(), "ConnectionRefresh", "connectionrefresh.connections.retired");
        }

        public Greeter.GreeterClient Client => _host.Client;

        public IReadOnlyList<string?> RetiredReasons() => [.. _retired.GetMeasurementSnapshot().Select(m => (string?)m.Tags["reason"])];

        /// <summary>Waits until the client has seen the closed connection go: its replacement's age then counts.</summary>
        public Task WaitForAgeRestartAsync() => Poll.UntilAsync(
            () => _host.Services.GetRequiredService<FakeLogCollector>().GetSnapshot().Any(r => r.Id.Id == AgeRestartedEvent && r.Category == "ConnectionRefresh"),
            "the client to count the age from the new connection (log event 7)");

        public void Dispose()
        {
            _retired.Dispose();
            _host.Dispose();
        }
    }

    /// <summary>One pod whose connections the test can close gracefully, as a server's max connection age does.</summary>
    private sealed class GoAwayCluster : IAsyncDisposable
    {
        private readonly SimulatedCluster _cluster;
        private readonly ConcurrentQueue<ConnectionContext> _connections;
        private readonly FakeTimeProvider _clock;

        private GoAwayCluster(SimulatedCluster cluster, ConcurrentQueue<ConnectionContext> connections, FakeTimeProvider clock)
        {
            _cluster = cluster;
            _connections = connections;
            _clock = clock;
        }

        public SimulatedPod Pod => _cluster.Pods[0];

        public static async Task<GoAwayCluster> StartAsync()
        {
            // The Greeter's delays run on this clock: a call is held until the test advances it.
            var clock = new FakeTimeProvider();
            var connections = new ConcurrentQueue<ConnectionContext>();
            var cluster = await SimulatedCluster.StartAsync(new()
            {
                Replicas = 1,
                TimeProvider = clock,
                ConfigureListen = listen => listen.Use(next => connection =>
                {
                    connections.Enqueue(connection);
                    return next(connection);
                }),
            });
            return new GoAwayCluster(cluster, connections, clock);
        }

        /// <summary>
        /// RequestClose on the first connection (Kestrel's graceful GOAWAY) while a call runs on it, calls until one opens
        /// a new connection, then lets the held call end, so that the old connection closes, and waits until the client has
        /// seen it go. The held call keeps the old connection open until the client has moved on: with no call running,
        /// Kestrel closes it at once, and a call the client is sending it at that moment fails (as it would without
        /// ConnectionRefresh).
        /// </summary>
        public async Task CloseFirstConnectionAsync(ClientHost host)
        {
            var held = host.Client.SayHelloAsync(new HelloRequest { Name = "held", DelayMs = 1_000 }, deadline: DateTime.UtcNow.AddSeconds(60));
            await Poll.UntilAsync(() => Pod.CallsActive == 1, "the held call to run");
            var connection = Assert.Single(_connections);
            connection.Features.Get<IConnectionLifetimeNotificationFeature>()!.RequestClose();

            // Kestrel's first GOAWAY (last stream id 2^31-1) still admits calls sent before the client saw it.
            await Poll.UntilAsync(
                async () =>
                {
                    await Call(host);
                    return Pod.ConnectionsAccepted == 2;
                },
                "a call to open a new connection");

            // The held delay may not have started its timer yet when the clock first moves: move it until the call ends.
            await Poll.UntilAsync(
                () =>
                {
                    _clock.Advance(TimeSpan.FromSeconds(1));
                    return held.ResponseAsync.IsCompleted;
                },
                "the held call to finish");
            Assert.Equal(Pod.Name, (await held).Instance);
            await host.WaitForAgeRestartAsync();
        }

        public ValueTask DisposeAsync() => _cluster.DisposeAsync();
    }
}
