using System.Diagnostics.Metrics;
using System.Net;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Server.Internal;
using ConnectionRefresh.Server.Tests.TestSupport;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;

namespace ConnectionRefresh.Server.Tests.Integration;

/// <summary>
/// <c>kestrel.UseServerConnectionAge()</c> sets Kestrel's endpoint defaults, which hold one callback and apply only to
/// endpoints created after it: when no endpoint received the age, the host fails to start instead of running without
/// it. Real Kestrel on loopback port 0; the connection age on a FakeTimeProvider.
/// </summary>
public sealed class KestrelEndpointDefaultsCheckTests
{
    [Fact]
    public async Task Start_ConfigureEndpointDefaultsAfterKestrelWideCall_FailsNamingCauseAndFix()
    {
        var failure = await StartFailsAsync(kestrel =>
        {
            kestrel.UseServerConnectionAge();
            kestrel.ConfigureEndpointDefaults(listen => listen.Protocols = HttpProtocols.Http2); // replaces it
            kestrel.Listen(IPAddress.Loopback, 0);
        });

        AssertExplains(failure);
    }

    [Fact]
    public async Task Start_EndpointsCreatedBeforeKestrelWideCall_Fails()
    {
        var failure = await StartFailsAsync(kestrel =>
        {
            kestrel.Listen(IPAddress.Loopback, 0, listen => listen.Protocols = HttpProtocols.Http2);
            kestrel.UseServerConnectionAge(); // for endpoints created from now on: none
        });

        AssertExplains(failure);
    }

    [Fact]
    public async Task Start_GenericHostWithConfigureEndpointDefaultsAfterKestrelWideCall_Fails()
    {
        using var host = Host.CreateDefaultBuilder()
            .ConfigureLogging(logging => logging.ClearProviders())
            .ConfigureServices(services => services.AddServerConnectionAge())
            .ConfigureWebHostDefaults(web => web
                .ConfigureKestrel(kestrel =>
                {
                    kestrel.UseServerConnectionAge();
                    kestrel.ConfigureEndpointDefaults(listen => listen.Protocols = HttpProtocols.Http2);
                    kestrel.Listen(IPAddress.Loopback, 0);
                })
                .Configure(_ => { }))
            .Build();

        var failure = await Assert.ThrowsAsync<InvalidOperationException>(() => host.StartAsync());

        AssertExplains(failure);
    }

    [Fact]
    public async Task Start_RegisteredButNoUseServerConnectionAge_FailsNamingTheFix()
    {
        // The README's two lines, the second forgotten: without the check the host runs and no connection ages.
        var failure = await StartFailsAsync(kestrel => kestrel.Listen(IPAddress.Loopback, 0, listen => listen.Protocols = HttpProtocols.Http2));

        Assert.Contains("services.AddServerConnectionAge(...) is registered, but UseServerConnectionAge was not called for any Kestrel endpoint", failure.Message, StringComparison.Ordinal);
        Assert.Contains("builder.WebHost.ConfigureKestrel(kestrel => kestrel.UseServerConnectionAge())", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_RegisteredOnAServerOtherThanKestrel_Starts()
    {
        // TestServer and other servers never configure Kestrel's options: nothing to check there.
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Services.AddServerConnectionAge();
        builder.Services.AddSingleton<IServer, NoServer>();
        await using var app = builder.Build();

        await app.StartAsync();
        await app.StopAsync();
    }

    [Fact]
    public async Task Start_KestrelWideCallBeforeEndpoints_StartsAndTheAgeApplies()
    {
        await using var host = await AgeTestHost.StartAsync(kestrel =>
        {
            kestrel.UseServerConnectionAge();
            kestrel.Listen(IPAddress.Loopback, 0, listen => listen.Protocols = HttpProtocols.Http2);
        });

        await host.AssertTheAgeAppliesAsync();
    }

    [Fact]
    public async Task Start_KestrelWideCallWithEndpointFromUrls_StartsAndTheAgeApplies()
    {
        // An endpoint given by URL receives its defaults only when Kestrel binds it, inside the host's start: a check
        // that ran before Kestrel had bound would fail here.
        await using var host = await AgeTestHost.StartAsync(
            kestrel => kestrel.UseServerConnectionAge(),
            web => web.UseUrls("http://127.0.0.1:0"));

        await host.AssertTheAgeAppliesOverHttp1Async();
    }

    [Fact]
    public async Task Start_ListenUseServerConnectionAgeInsideApplicationsEndpointDefaults_StartsAndTheAgeApplies()
    {
        // The application's own endpoint defaults replace the Kestrel-wide call, but apply the age themselves.
        await using var host = await AgeTestHost.StartAsync(kestrel =>
        {
            kestrel.UseServerConnectionAge();
            kestrel.ConfigureEndpointDefaults(listen =>
            {
                listen.Protocols = HttpProtocols.Http2;
                listen.UseServerConnectionAge();
            });
            kestrel.Listen(IPAddress.Loopback, 0);
        });

        await host.AssertTheAgeAppliesAsync();
    }

    private static void AssertExplains(InvalidOperationException failure)
    {
        Assert.Contains("kestrel.UseServerConnectionAge(...) was called, but no Kestrel endpoint received the connection age", failure.Message, StringComparison.Ordinal);
        Assert.Contains("a later ConfigureEndpointDefaults(...) replaced it", failure.Message, StringComparison.Ordinal);
        Assert.Contains("every endpoint was created (kestrel.Listen...) before the call", failure.Message, StringComparison.Ordinal);
        Assert.Contains("call listen.UseServerConnectionAge() inside your own ConfigureEndpointDefaults callback, or on each endpoint", failure.Message, StringComparison.Ordinal);
    }

    private static async Task<InvalidOperationException> StartFailsAsync(Action<KestrelServerOptions> configureKestrel)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Services.AddServerConnectionAge();
        builder.WebHost.ConfigureKestrel(configureKestrel);
        await using var app = builder.Build();

        // Disposing the application stops the Kestrel its failed start left listening.
        return await Assert.ThrowsAsync<InvalidOperationException>(() => app.StartAsync());
    }

    /// <summary>A server that is not Kestrel and serves nothing, as TestServer is for these checks.</summary>
    private sealed class NoServer : IServer
    {
        public IFeatureCollection Features { get; } = new FeatureCollection();

        public Task StartAsync<TContext>(IHttpApplication<TContext> application, CancellationToken cancellationToken)
            where TContext : notnull => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public void Dispose()
        {
        }
    }

    /// <summary>A Greeter host with a 1-minute connection age (no jitter) on a FakeTimeProvider.</summary>
    private sealed class AgeTestHost : IAsyncDisposable
    {
        private static readonly TimeSpan Age = TimeSpan.FromMinutes(1);

        private readonly WebApplication _app;
        private readonly FakeTimeProvider _clock;
        private readonly MetricCollector<long> _closes;

        private AgeTestHost(WebApplication app, FakeTimeProvider clock, MetricCollector<long> closes, Uri address)
        {
            _app = app;
            _clock = clock;
            _closes = closes;
            Address = address;
        }

        public Uri Address { get; }

        public static async Task<AgeTestHost> StartAsync(Action<KestrelServerOptions> configureKestrel, Action<IWebHostBuilder>? web = null)
        {
            var clock = new FakeTimeProvider(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero));
            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            builder.Services.AddSingleton(new GreeterProbe());
            builder.Services.AddGrpc();
            builder.Services.AddSingleton<TimeProvider>(clock);
            builder.Services.AddServerConnectionAge(o =>
            {
                o.MaxConnectionAge = Age;
                o.MaxConnectionAgeJitter = 0;
            });
            web?.Invoke(builder.WebHost);
            builder.WebHost.ConfigureKestrel(configureKestrel);
            var app = builder.Build();
            app.MapGrpcService<TestGreeterService>();
            app.MapGet("/ping", () => "pong");
            var closes = new MetricCollector<long>(
                app.Services.GetRequiredService<IMeterFactory>(), ServerConnectionAgeMetrics.MeterName, ServerConnectionAgeMetrics.ClosesName);
            await app.StartAsync();
            var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();
            return new AgeTestHost(app, clock, closes, new Uri(address));
        }

        /// <summary>A gRPC call opens a connection; at its age it is closed, by age.</summary>
        public async Task AssertTheAgeAppliesAsync()
        {
            using var channel = GrpcChannel.ForAddress(Address);
            await new Greeter.GreeterClient(channel).SayHelloAsync(new HelloRequest { Name = "a" });

            AssertClosedByAgeAfterAdvance();
        }

        /// <summary>The same over HTTP/1.1, for an endpoint with Kestrel's default protocols (HTTP/1.1 only without TLS).</summary>
        public async Task AssertTheAgeAppliesOverHttp1Async()
        {
            using var client = new HttpClient { BaseAddress = Address };
            Assert.Equal("pong", await client.GetStringAsync("/ping"));

            AssertClosedByAgeAfterAdvance();
        }

        private void AssertClosedByAgeAfterAdvance()
        {
            Assert.Empty(_closes.GetMeasurementSnapshot());
            _clock.Advance(Age);
            var close = Assert.Single(_closes.GetMeasurementSnapshot());
            Assert.Equal("max_age", close.Tags[ServerConnectionAgeMetrics.ReasonTag]);
        }

        public async ValueTask DisposeAsync()
        {
            using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await _app.StopAsync(stop.Token);
            await _app.DisposeAsync();
            _closes.Dispose();
        }
    }
}
