using System.Diagnostics.Metrics;
using System.Net;
using ConnectionRefresh.Server.Internal;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Server.Tests.TestSupport;

/// <summary>
/// A real Kestrel gRPC server on 127.0.0.1:0 (HTTP/2 without TLS) serving <see cref="TestGreeterService"/>, with the
/// server-side connection age on its endpoint. When a <see cref="TimeProvider"/> is given it is registered in the
/// container, so the connection age runs on it (tests advance a FakeTimeProvider); Kestrel's own timeouts then use it
/// too and stay frozen, which none of these tests relies on. Sockets and handlers' delays run in real time.
/// </summary>
internal sealed class GreeterTestHost : IAsyncDisposable
{
    private readonly WebApplication _app;
    private long _connectionsAccepted;
    private bool _stopped;

    private GreeterTestHost(WebApplication app, GreeterProbe probe)
    {
        _app = app;
        Probe = probe;
    }

    public Uri Address { get; private set; } = null!;

    public GreeterProbe Probe { get; }

    public long ConnectionsAccepted => Interlocked.Read(ref _connectionsAccepted);

    public MetricCollector<long> Closes { get; private set; } = null!;

    public MetricCollector<long> Aborts { get; private set; } = null!;

    public MetricCollector<double> Ages { get; private set; } = null!;

    public long CloseCount => Closes.GetMeasurementSnapshot().Count;

    public long AbortCount => Aborts.GetMeasurementSnapshot().Count;

    /// <summary>Connections that have ended (their age was recorded).</summary>
    public long EndedCount => Ages.GetMeasurementSnapshot().Count;

    /// <param name="configure">The options.</param>
    /// <param name="time">The clock of the connection age, or <see langword="null"/> for the system clock.</param>
    /// <param name="registerServices">
    /// <see langword="true"/>: <c>services.AddServerConnectionAge(configure)</c> and <c>listen.UseServerConnectionAge()</c>;
    /// <see langword="false"/>: only <c>listen.UseServerConnectionAge(configure)</c> (no call counting).
    /// </param>
    /// <param name="protocols">
    /// The endpoint's protocols. Without TLS, Kestrel speaks HTTP/1.1 only on an endpoint that allows HTTP/1.x (it
    /// has no h2c upgrade), so <see cref="HttpProtocols.Http1AndHttp2"/> makes an HTTP/1.1 endpoint; <c>GET /ping</c>
    /// answers <c>pong</c> for plain HTTP clients.
    /// </param>
    /// <param name="kestrelDefaults">Runs on Kestrel's options before the endpoint is added (for endpoint defaults).</param>
    /// <param name="useConnectionAge">
    /// Replaces the endpoint's <c>UseServerConnectionAge</c> call chosen by <paramref name="registerServices"/>.
    /// </param>
    /// <param name="services">Adds to the host's services (for example its <c>HostOptions</c>).</param>
    public static async Task<GreeterTestHost> StartAsync(
        Action<ServerConnectionAgeOptions> configure,
        TimeProvider? time = null,
        bool registerServices = true,
        HttpProtocols protocols = HttpProtocols.Http2,
        Action<KestrelServerOptions>? kestrelDefaults = null,
        Action<ListenOptions>? useConnectionAge = null,
        Action<IServiceCollection>? services = null)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        var probe = new GreeterProbe();
        builder.Services.AddSingleton(probe);
        builder.Services.AddGrpc();
        if (time is not null)
        {
            builder.Services.AddSingleton(time);
        }

        if (registerServices)
        {
            builder.Services.AddServerConnectionAge(configure);
        }

        services?.Invoke(builder.Services);
        GreeterTestHost? host = null;
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrelDefaults?.Invoke(kestrel);
            kestrel.Listen(IPAddress.Loopback, 0, listen =>
            {
                listen.Protocols = protocols;
                listen.Use(next => connection =>
                {
                    Interlocked.Increment(ref host!._connectionsAccepted);
                    return next(connection);
                });
                if (useConnectionAge is not null)
                {
                    useConnectionAge(listen);
                }
                else if (registerServices)
                {
                    listen.UseServerConnectionAge();
                }
                else
                {
                    listen.UseServerConnectionAge(configure);
                }
            });
        });

        var app = builder.Build();
        app.MapGrpcService<TestGreeterService>();
        app.MapGet("/ping", () => "pong");
        host = new GreeterTestHost(app, probe);
        var meterFactory = app.Services.GetRequiredService<IMeterFactory>();
        host.Closes = new MetricCollector<long>(meterFactory, ServerConnectionAgeMetrics.MeterName, ServerConnectionAgeMetrics.ClosesName);
        host.Aborts = new MetricCollector<long>(meterFactory, ServerConnectionAgeMetrics.MeterName, ServerConnectionAgeMetrics.AbortsName);
        host.Ages = new MetricCollector<double>(meterFactory, ServerConnectionAgeMetrics.MeterName, ServerConnectionAgeMetrics.AgeName);
        await app.StartAsync();
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();
        host.Address = new Uri(address);
        return host;
    }

    /// <summary>Stops the host the way a pod exits (SIGTERM): <c>IHost.StopAsync</c>, Kestrel's graceful shutdown.</summary>
    /// <param name="cancellationToken">Ends the graceful part: Kestrel then aborts the connections still open.</param>
    public Task StopAsync(CancellationToken cancellationToken = default)
    {
        _stopped = true;
        return _app.StopAsync(cancellationToken);
    }

    public async ValueTask DisposeAsync()
    {
        if (!_stopped)
        {
            using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await _app.StopAsync(stop.Token);
        }

        await _app.DisposeAsync();
        Closes.Dispose();
        Aborts.Dispose();
        Ages.Dispose();
    }
}
