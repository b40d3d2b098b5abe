using System.Diagnostics.Metrics;
using ConnectionRefresh.Internal;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using ConnectionRefresh.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Tests.Internal;

/// <summary>The primary handler checks at host start-up: a real host, as an application builds it.</summary>
public sealed class HandlerChainStartupValidatorTests
{
    private const string Name = "HelloClient";

    /// <summary>Records how many handler chains were built when the host's hosted services start.</summary>
    private sealed class StartRecorder(Func<int> built) : IHostedService
    {
        public int? BuiltWhenStarted { get; private set; }

        public Task StartAsync(CancellationToken cancellationToken)
        {
            BuiltWhenStarted = built();
            return Task.CompletedTask;
        }

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }

    private static HostApplicationBuilder HostBuilder()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Logging.ClearProviders();
        return builder;
    }

    private static IHttpClientBuilder GrpcClient(IServiceCollection services, Uri? address = null)
        => services.AddGrpcClient<Greeter.GreeterClient>(Name, o => o.Address = address ?? new Uri("http://greeter:5000"));

    public static TheoryData<string, Action<IHttpClientBuilder>> Mistakes() => new()
    {
        { "replaced after", b => b.AddConnectionRefresh().ConfigurePrimaryHttpMessageHandler(() => new SocketsHttpHandler()) },
        { "UseProxy before", b => b.ConfigurePrimaryHttpMessageHandler(() => new SocketsHttpHandler { UseProxy = false }).AddConnectionRefresh() },
        {
            "certificate callback before", b => b.ConfigurePrimaryHttpMessageHandler(() => new SocketsHttpHandler
            {
                SslOptions = { RemoteCertificateValidationCallback = (_, _, _, errors) => errors == System.Net.Security.SslPolicyErrors.None },
            }).AddConnectionRefresh()
        },
        { "changed in place after", b => b.AddConnectionRefresh().ConfigurePrimaryHttpMessageHandler((h, _) => ((SocketsHttpHandler)h).UseProxy = false) },
        { "changed in place before", b => b.ConfigurePrimaryHttpMessageHandler((h, _) => ((SocketsHttpHandler)h).UseProxy = false).AddConnectionRefresh() },
    };

    [Theory]
    [MemberData(nameof(Mistakes))]
    public async Task StartAsync_PrimaryHandlerMistake_FailsWithTheMessageOfTheFirstCreation(string mistake, Action<IHttpClientBuilder> register)
    {
        _ = mistake;

        // Without a host nothing validates on start: as before, the client's first creation fails.
        var services = new ServiceCollection();
        register(GrpcClient(services));
        using var provider = services.BuildServiceProvider();
        var atCreation = Assert.ThrowsAny<InvalidOperationException>(() => provider.GetRequiredService<Greeter.GreeterClient>());

        var builder = HostBuilder();
        register(GrpcClient(builder.Services));
        using var host = builder.Build();

        // Before: StartAsync succeeded ("started"), and the first call failed with this message.
        var atStart = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());
        Assert.Equal(atCreation.Message, atStart.Message);
        Assert.StartsWith($"HTTP client '{Name}' ", atStart.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task StartAsync_PlainHttpClientWithReplacedPrimary_FailsToo()
    {
        var builder = HostBuilder();
        builder.Services.AddHttpClient("plain").AddConnectionRefresh().ConfigurePrimaryHttpMessageHandler(() => new HttpClientHandler());
        using var host = builder.Build();

        var failure = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());
        Assert.Contains("HTTP client 'plain' replaced its primary handler", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task StartAsync_TwoClientsWithMistakes_ReportsBoth()
    {
        var builder = HostBuilder();
        GrpcClient(builder.Services).AddConnectionRefresh().ConfigurePrimaryHttpMessageHandler(() => new SocketsHttpHandler());
        builder.Services.AddHttpClient("plain").ConfigurePrimaryHttpMessageHandler(() => new SocketsHttpHandler { UseProxy = false }).AddConnectionRefresh();
        using var host = builder.Build();

        // Reported as validation failures, like the options' own, so that one start shows every mistake.
        var failure = await Assert.ThrowsAsync<AggregateException>(() => host.StartAsync());
        Assert.Collection(
            failure.InnerExceptions,
            first => Assert.Contains($"HTTP client '{Name}' replaced its primary handler", first.Message, StringComparison.Ordinal),
            second => Assert.Contains("HTTP client 'plain' configures UseProxy", second.Message, StringComparison.Ordinal));
    }

    [Fact]
    public async Task StartAsync_InvalidOptions_ReportsThemOnceNotAgainForTheHandler()
    {
        var builder = HostBuilder();
        GrpcClient(builder.Services).AddConnectionRefresh(o => o.ConnectionsPerEndpoint = 0);
        using var host = builder.Build();

        // The chain would fail with the same options error: only the options' own ValidateOnStart reports it.
        var failure = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());
        Assert.Equal(typeof(ConnectionRefreshOptions), failure.OptionsType);
        Assert.Contains("ConnectionsPerEndpoint", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task StartAsync_DelegatingHandlerFactoryThrows_StopsTheHostWithItsException()
    {
        // HttpClientFactory keeps a failed chain for good: the client would never work, so the host stops at once.
        var builder = HostBuilder();
        GrpcClient(builder.Services).AddHttpMessageHandler(() => throw new InvalidDataException("no token file")).AddConnectionRefresh();
        using var host = builder.Build();

        var failure = await Assert.ThrowsAsync<InvalidDataException>(() => host.StartAsync());
        Assert.Equal("no token file", failure.Message);
    }

    [Fact]
    public async Task StartAsync_CorrectConfiguration_CallsUseTheChainBuiltAtStartUpWithoutExtraConnections()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        var markers = new List<CountingHandler>();
        var builder = HostBuilder();
        GrpcClient(builder.Services, cluster.Address)
            .AddHttpMessageHandler(() =>
            {
                var marker = new CountingHandler();
                lock (markers)
                {
                    markers.Add(marker);
                }

                return marker;
            })
            .AddConnectionRefresh();
        int Built()
        {
            lock (markers)
            {
                return markers.Count;
            }
        }

        var recorder = new StartRecorder(Built);
        builder.Services.AddSingleton<IHostedService>(recorder);
        using var host = builder.Build();
        using var opened = new MetricCollector<long>(host.Services.GetRequiredService<IMeterFactory>(), ConnectionRefreshMetrics.MeterName, "connectionrefresh.connections.opened");

        await host.StartAsync();

        // Built during start-up validation, which runs before the hosted services start; no connection yet.
        Assert.Equal(1, recorder.BuiltWhenStarted);
        Assert.Equal(0, cluster.Pods[0].ConnectionsAccepted);

        var client = host.Services.GetRequiredService<Greeter.GreeterClient>();
        for (var i = 0; i < 3; i++)
        {
            await client.SayHelloAsync(new HelloRequest { Name = "start" });
        }

        // The gRPC channel took the chain built at start-up (HttpClientFactory keeps it as the active handler): no second
        // chain, no second set of connections.
        Assert.Equal(1, Built());
        Assert.Equal(3, markers[0].Calls);
        Assert.Equal(1, cluster.Pods[0].ConnectionsAccepted);
        Assert.Equal(1, opened.GetMeasurementSnapshot().Sum(m => m.Value));

        await host.StopAsync();
    }

    [Fact]
    public async Task StartAsync_ClientNeverUsed_BuildsItsChainOnceAndConnectsNowhere()
    {
        var created = 0;
        var builder = HostBuilder();
        builder.Services.AddHttpClient("unused").AddHttpMessageHandler(() =>
        {
            Interlocked.Increment(ref created);
            return new CountingHandler();
        }).AddConnectionRefresh();
        using var host = builder.Build();
        using var opened = new MetricCollector<long>(host.Services.GetRequiredService<IMeterFactory>(), ConnectionRefreshMetrics.MeterName, "connectionrefresh.connections.opened");

        await host.StartAsync();

        // Built at start-up though no client exists yet; it opens nothing by itself.
        Assert.Equal(1, Volatile.Read(ref created));
        Assert.Empty(opened.GetMeasurementSnapshot());

        // A client created within HandlerLifetime gets that chain: none is built for it.
        using var client = host.Services.GetRequiredService<IHttpClientFactory>().CreateClient("unused");
        Assert.Equal(1, Volatile.Read(ref created));
        await host.StopAsync();
    }
}
