using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Sockets;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using ConnectionRefresh.Tests.Infrastructure;
using Google.Protobuf;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Http.Logging;
using Microsoft.Extensions.Logging.Testing;

namespace ConnectionRefresh.Tests.Integration;

/// <summary>ConnectionRefresh next to what applications already configure on their clients.</summary>
public sealed class CompositionTests
{
    [Fact]
    public async Task UserDelegatingHandlerAndChannelOptions_WithRefresh_KeepWorking()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 2 });
        var counting = new CountingHandler();
        using var host = GreeterClientHost.WithRefresh(cluster.Address, o => o.MaxRequestsPerConnection = 5, b => b
            .AddHttpMessageHandler(() => counting)
            .ConfigureChannel(o => o.MaxReceiveMessageSize = 64 * 1024));

        for (var i = 0; i < 20; i++)
        {
            await host.Client.SayHelloAsync(new HelloRequest { Name = "c" });
        }

        Assert.Equal(20, counting.Calls);
        Assert.Equal(4, cluster.Pods.Sum(p => p.ConnectionsAccepted));
    }

    [Fact]
    public async Task ConfigureChannelWrappingTheHttpHandler_WithRefresh_CallsPassTheWrapperAndAreRecycled()
    {
        // Grpc.Net.ClientFactory hands ConfigureChannel the client's handler chain: a DelegatingHandler around it sees
        // every call, and the calls still reach ConnectionRefresh inside, which recycles the connection every 5 calls.
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        var counting = new CountingHandler();
        using var host = GreeterClientHost.WithRefresh(cluster.Address, o => o.MaxRequestsPerConnection = 5, b => b
            .ConfigureChannel(o =>
            {
                counting.InnerHandler = o.HttpHandler!;
                o.HttpHandler = counting;
            }));

        for (var i = 0; i < 20; i++)
        {
            await host.Client.SayHelloAsync(new HelloRequest { Name = "w" });
        }

        Assert.Equal(20, counting.Calls);
        Assert.Equal(4, cluster.Pods[0].ConnectionsAccepted);
    }

    [Fact]
    public async Task TransientResolution_ManyClients_ShareTheRefreshedConnections()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var host = GreeterClientHost.WithRefresh(cluster.Address, o => o.MaxRequestsPerConnection = 10);

        for (var i = 0; i < 30; i++)
        {
            var client = host.Services.GetRequiredService<Greeter.GreeterClient>();
            await client.SayHelloAsync(new HelloRequest { Name = "t" });
        }

        Assert.Equal(3, cluster.Pods[0].ConnectionsAccepted);
    }

    [Fact]
    public async Task ConfigureConnectionRefreshHandler_ReachesEveryRealConnection()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        var connects = 0;
        using var host = GreeterClientHost.WithRefresh(cluster.Address, o => o.MaxRequestsPerConnection = 10, b => b
            .ConfigureConnectionRefreshHandler((handler, _) => handler.ConnectCallback = async (context, token) =>
            {
                Interlocked.Increment(ref connects);
                var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                await socket.ConnectAsync(context.DnsEndPoint, token);
                return new NetworkStream(socket, ownsSocket: true);
            }));
        using var opened = new MetricCollector<long>(host.Services.GetRequiredService<IMeterFactory>(), "ConnectionRefresh", "connectionrefresh.connections.opened");

        for (var i = 0; i < 30; i++)
        {
            await host.Client.SayHelloAsync(new HelloRequest { Name = "t" });
        }

        Assert.Equal(3, Volatile.Read(ref connects));
        Assert.Equal(3, cluster.Pods[0].ConnectionsAccepted);
        Assert.Equal(3, opened.GetMeasurementSnapshot().Sum(m => m.Value));
    }

    [Fact]
    public async Task ConfigureConnectionRefreshHandler_Tls_CallsSucceedAndRecycle()
    {
        using var certificate = SelfSignedCertificate.Create();
        await using var cluster = await SimulatedCluster.StartAsync(new()
        {
            Replicas = 2,
            ConfigureListen = listen => listen.UseHttps(certificate),
        });
        var address = new UriBuilder(cluster.Address) { Scheme = Uri.UriSchemeHttps }.Uri;
        var validated = 0;
        using var host = GreeterClientHost.WithRefresh(address, o => o.MaxRequestsPerConnection = 10, b => b
            .ConfigureConnectionRefreshHandler((handler, _) => handler.SslOptions.RemoteCertificateValidationCallback = (_, presented, _, _) =>
            {
                Interlocked.Increment(ref validated);
                return presented?.GetCertHashString() == certificate.GetCertHashString();
            }));

        for (var i = 0; i < 30; i++)
        {
            await host.Client.SayHelloAsync(new HelloRequest { Name = "tls" });
        }

        // Every connection is a new TLS session, checked by the application's own callback.
        Assert.Equal(3, cluster.Pods.Sum(p => p.ConnectionsAccepted));
        Assert.Equal(3, Volatile.Read(ref validated));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task RuntimeHttpMetrics_WithRefresh_AreReportedThroughTheApplicationsMeterFactory(bool refresh)
    {
        // HttpClientFactory hands the application's IMeterFactory to a SocketsHttpHandler primary handler, so that the
        // runtime's http.client.* metrics belong to the application's meters (what MetricCollector, and any listener
        // scoped to the DI IMeterFactory, sees). The handlers ConnectionRefresh creates must get it too.
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var host = refresh ? GreeterClientHost.WithRefresh(cluster.Address) : GreeterClientHost.Plain(cluster.Address);
        using var requests = new MetricCollector<double>(host.Services.GetRequiredService<IMeterFactory>(), "System.Net.Http", "http.client.request.duration");

        await host.Client.SayHelloAsync(new HelloRequest { Name = "m" });

        Assert.Single(requests.GetMeasurementSnapshot());
    }

    [Fact]
    public async Task PlainHttpClient_Http2Calls_AreRecycled()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        var services = new ServiceCollection();
        AddPlainHttp2Client(services, cluster.Address).AddConnectionRefresh(o => o.MaxRequestsPerConnection = 10);
        using var provider = services.BuildServiceProvider();
        var http = provider.GetRequiredService<IHttpClientFactory>().CreateClient("plain");

        for (var i = 0; i < 30; i++)
        {
            await SayHelloOverPlainHttpAsync(http);
        }

        Assert.Equal(3, cluster.Pods[0].ConnectionsAccepted);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task PlainHttpClient_ResponseCopiedSynchronously_ReadsTheBody(bool refresh)
    {
        // HttpContent.CopyTo is the synchronous copy; SocketsHttpHandler's content supports it over HTTP/2 too.
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        var services = new ServiceCollection();
        var builder = AddPlainHttp2Client(services, cluster.Address);
        if (refresh)
        {
            builder.AddConnectionRefresh(o => o.MaxRequestsPerConnection = 1);
        }

        using var provider = services.BuildServiceProvider();
        var http = provider.GetRequiredService<IHttpClientFactory>().CreateClient("plain");
        using var content = new ByteArrayContent(new byte[5]);
        content.Headers.ContentType = new("application/grpc");
        using var request = new HttpRequestMessage(HttpMethod.Post, "/greet.Greeter/SayHello") { Content = content };

        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        using var body = new MemoryStream();
        response.Content.CopyTo(body, null, CancellationToken.None);

        Assert.NotEqual(0, body.Length);
        if (refresh)
        {
            // The call was its connection's last (a budget of one): reading its body to the end releases the connection.
            await Poll.UntilAsync(() => cluster.Pods[0].OpenConnections == 0, "the retired connection closed", TimeSpan.FromSeconds(10));
        }
    }

    [Fact]
    public async Task PlainHttpClient_ReadCancelledMidStream_KeepsTheConnectionUntilTheStreamEnds()
    {
        // SocketsHttpHandler's HTTP/2 response stream survives a cancelled read: the caller may read on (a per-read
        // timeout). Until the stream has ended its connection must stay leased: not disposed, so still pinged, and
        // counted as draining.
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var client = new OneCallPerConnectionClient(cluster.Address);
        var (http, draining) = (client.Http, client.Draining);
        var message = new StreamRequest { Name = "s", Count = 2, DelayMs = 5000 }.ToByteArray();
        var frame = new byte[5 + message.Length];
        System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(frame.AsSpan(1), message.Length);
        message.CopyTo(frame, 5);
        using var content = new ByteArrayContent(frame);
        content.Headers.ContentType = new("application/grpc");
        using var request = new HttpRequestMessage(HttpMethod.Post, "/greet.Greeter/StreamHellos")
        {
            Content = content,
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };

        // A budget of one call: the connection is retired as this call starts and drains while it runs.
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        var body = await response.Content.ReadAsStreamAsync();
        var header = new byte[5];
        await body.ReadExactlyAsync(header);
        await body.ReadExactlyAsync(new byte[System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(1))]);
        using (var timeout = new CancellationTokenSource())
        {
            // The second message comes 5 s after the first (ample on a loaded machine): this read waits for it when
            // it is cancelled.
            var read = body.ReadAsync(new byte[64], timeout.Token).AsTask();
            await timeout.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => read);
        }

        Assert.Equal(1, draining.GetMeasurementSnapshot().Sum(m => m.Value));
        var rest = new MemoryStream();
        await body.CopyToAsync(rest);
        Assert.NotEqual(0, rest.Length); // the second message: the stream went on after the cancelled read
        Assert.Equal(0, draining.GetMeasurementSnapshot().Sum(m => m.Value));
    }

    [Fact]
    public async Task PlainHttpClient_HeadResponseLeftUndisposed_ReleasesTheConnection()
    {
        // HttpClient does not buffer the (empty) body of a HEAD response, and code that only looks at its status often
        // leaves it undisposed: harmless with SocketsHttpHandler, whose stream ended with the headers. The connection's
        // lease must end there too, or a retired connection is never disposed.
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var client = new OneCallPerConnectionClient(cluster.Address);
        var (http, draining) = (client.Http, client.Draining);

        // A budget of one call: the connection is retired as this call starts, and drained once it has ended.
        var response = await http.SendAsync(new HttpRequestMessage(HttpMethod.Head, "/")
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        });

        Assert.Equal(HttpVersion.Version20, response.Version);
        Assert.Equal(0, draining.GetMeasurementSnapshot().Sum(m => m.Value));
        await Poll.UntilAsync(() => cluster.Pods[0].OpenConnections == 0, "the retired connection closed", TimeSpan.FromSeconds(10));
        GC.KeepAlive(response);
    }

    [Fact]
    public async Task HttpClientFactoryDefaultLogging_PlainHttpClientWithRefresh_IsKept()
    {
        // Only gRPC clients lose the factory's logging handlers: for a plain HTTP client the status they log is the answer.
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        var services = new ServiceCollection();
        services.AddFakeLogging();
        AddPlainHttp2Client(services, cluster.Address).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        await SayHelloOverPlainHttpAsync(provider.GetRequiredService<IHttpClientFactory>().CreateClient("plain"));

        Assert.Contains(provider.GetRequiredService<FakeLogCollector>().GetSnapshot(), r => r.Category == "System.Net.Http.HttpClient.plain.LogicalHandler");
    }

    private static IHttpClientBuilder AddPlainHttp2Client(IServiceCollection services, Uri address) => services.AddHttpClient("plain", c =>
    {
        c.BaseAddress = address;
        c.DefaultRequestVersion = HttpVersion.Version20;
        c.DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact;
    });

    /// <summary>A plain HTTP/2 client with refresh and a budget of one call per connection, and its draining gauge.</summary>
    private sealed class OneCallPerConnectionClient : IDisposable
    {
        private readonly ServiceProvider _provider;

        public OneCallPerConnectionClient(Uri address)
        {
            var services = new ServiceCollection();
            services.AddMetrics();
            AddPlainHttp2Client(services, address).AddConnectionRefresh(o => o.MaxRequestsPerConnection = 1);
            _provider = services.BuildServiceProvider();
            Draining = new MetricCollector<long>(_provider.GetRequiredService<IMeterFactory>(), "ConnectionRefresh", "connectionrefresh.connections.draining");
            Http = _provider.GetRequiredService<IHttpClientFactory>().CreateClient("plain");
        }

        public HttpClient Http { get; }

        /// <summary>Connections retired and not yet closed (the sum of the gauge's changes).</summary>
        public MetricCollector<long> Draining { get; }

        public void Dispose()
        {
            Draining.Dispose();
            _provider.Dispose();
        }
    }

    // A raw gRPC call: an empty HelloRequest in a 5-byte gRPC frame.
    private static async Task SayHelloOverPlainHttpAsync(HttpClient http)
    {
        using var content = new ByteArrayContent(new byte[5]);
        content.Headers.ContentType = new("application/grpc");
        using var response = await http.PostAsync("/greet.Greeter/SayHello", content);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.NotEmpty(await response.Content.ReadAsByteArrayAsync());
    }

    public static TheoryData<string, bool> LoggingSetups => new()
    {
        { "AddGrpcClient alone", true },
        { "AddConnectionRefresh", false },
        { "AddConnectionRefresh, then AddDefaultLogger", true },
        { "AddDefaultLogger, then AddConnectionRefresh", true },
    };

    [Theory]
    [MemberData(nameof(LoggingSetups))]
    public async Task HttpClientFactoryDefaultLogging_WithRefresh_IsRemovedUnlessAddDefaultLoggerAsksForIt(string setup, bool expectLogs)
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var host = GreeterClientHost.Create(cluster.Address, b => _ = setup switch
        {
            "AddGrpcClient alone" => b,
            "AddConnectionRefresh" => b.AddConnectionRefresh(),
            "AddConnectionRefresh, then AddDefaultLogger" => b.AddConnectionRefresh().AddDefaultLogger(),
            _ => b.AddDefaultLogger().AddConnectionRefresh(),
        }, services => services.AddFakeLogging());

        await host.Client.SayHelloAsync(new HelloRequest { Name = "log" });

        // HttpClientFactory's default handlers log under System.Net.Http.HttpClient.<name>.LogicalHandler/ClientHandler.
        var httpLogs = host.Services.GetRequiredService<FakeLogCollector>().GetSnapshot()
            .Count(r => r.Category?.StartsWith("System.Net.Http.HttpClient.", StringComparison.Ordinal) == true);
        Assert.Equal(expectLogs, httpLogs > 0);
        Assert.Equal(1L, cluster.Pods[0].CallsServed);
    }

    [Fact]
    public async Task AddLogger_BeforeAddConnectionRefresh_KeepsLoggingEveryCall()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        var logger = new CountingHttpClientLogger();
        using var host = GreeterClientHost.Create(cluster.Address, b => b.AddLogger(_ => logger).AddConnectionRefresh());

        for (var i = 0; i < 3; i++)
        {
            await host.Client.SayHelloAsync(new HelloRequest { Name = "log" });
        }

        Assert.Equal(3, logger.Stopped);
    }

    private sealed class CountingHttpClientLogger : IHttpClientLogger
    {
        private int _stopped;

        public int Stopped => Volatile.Read(ref _stopped);

        public object? LogRequestStart(HttpRequestMessage request) => null;

        public void LogRequestStop(object? context, HttpRequestMessage request, HttpResponseMessage response, TimeSpan elapsed)
            => Interlocked.Increment(ref _stopped);

        public void LogRequestFailed(object? context, HttpRequestMessage request, HttpResponseMessage? response, Exception exception, TimeSpan elapsed)
        {
        }
    }
}
