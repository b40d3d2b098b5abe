using System.Collections.Concurrent;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Server.Internal;
using ConnectionRefresh.Server.Tests.TestSupport;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Time.Testing;

namespace ConnectionRefresh.Server.Tests.Integration;

/// <summary>
/// How the Kestrel registrations combine on one endpoint: real Kestrel on loopback, the connection age on a
/// FakeTimeProvider (its timers fire inside <c>Advance</c>, so what did not happen by then does not happen).
/// </summary>
public sealed class EndpointConfigurationTests
{
    private static FakeTimeProvider NewClock() => new(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero));

    [Fact]
    public async Task UseServerConnectionAge_EndpointDefaultsThenEndpointsOwnCall_EndpointsOptionsApplyOnce()
    {
        var clock = NewClock();
        await using var host = await GreeterTestHost.StartAsync(
            o =>
            {
                // The registered options, used by the endpoint defaults: idle only.
                o.MaxConnectionAge = Timeout.InfiniteTimeSpan;
                o.MaxConnectionIdle = TimeSpan.FromSeconds(30);
            },
            clock,
            kestrelDefaults: kestrel => kestrel.UseServerConnectionAge(),
            useConnectionAge: listen => listen.UseServerConnectionAge(o =>
            {
                // The endpoint's own call: age only. It replaces the defaults for this endpoint.
                o.MaxConnectionAge = TimeSpan.FromMinutes(1);
                o.MaxConnectionAgeJitter = 0;
            }));
        using var channel = GrpcChannel.ForAddress(host.Address);
        var client = new Greeter.GreeterClient(channel);
        using var timeout = new CancellationTokenSource(Poll.DefaultTimeout);
        using var stream = client.StreamHellos(new StreamRequest { Name = "busy", Count = 1_000_000, DelayMs = 10 }, cancellationToken: timeout.Token);
        Assert.True(await stream.ResponseStream.MoveNext());

        // A busy connection is never idle, and the endpoint's options have no idle limit anyway; a second
        // connection age applied by the defaults, blind to the calls counted by the first, would close it here.
        clock.Advance(TimeSpan.FromSeconds(45));
        Assert.Equal(0, host.CloseCount);

        clock.Advance(TimeSpan.FromSeconds(15));
        var close = Assert.Single(host.Closes.GetMeasurementSnapshot());
        Assert.Equal("max_age", close.Tags[ServerConnectionAgeMetrics.ReasonTag]);
        Assert.True(await stream.ResponseStream.MoveNext(), "the stream outlives the graceful close");
    }

    [Fact]
    public async Task UseServerConnectionAge_CalledTwiceOnOneEndpoint_LastOptionsApplyOnce()
    {
        var clock = NewClock();
        await using var host = await GreeterTestHost.StartAsync(
            _ => { },
            clock,
            registerServices: false,
            useConnectionAge: listen => listen
                .UseServerConnectionAge(o => o.MaxConnectionAge = TimeSpan.FromSeconds(10))
                .UseServerConnectionAge(o =>
                {
                    o.MaxConnectionAge = TimeSpan.FromMinutes(1);
                    o.MaxConnectionAgeJitter = 0;
                }));
        using var channel = GrpcChannel.ForAddress(host.Address);
        var client = new Greeter.GreeterClient(channel);

        await client.SayHelloAsync(new HelloRequest { Name = "a" });

        // The first call's 10 s are replaced by the second call's minute, not added as a second age.
        clock.Advance(TimeSpan.FromSeconds(30));
        Assert.Equal(0, host.CloseCount);

        clock.Advance(TimeSpan.FromSeconds(30));
        Assert.Equal(1, host.CloseCount);
        await Poll.UntilAsync(() => host.EndedCount >= 1, "the connection ended after its GOAWAY");
        await client.SayHelloAsync(new HelloRequest { Name = "b" });

        // One age per connection: the new connection's age is recorded when the host stops, so the first
        // connection's is the only one now.
        var age = Assert.Single(host.Ages.GetMeasurementSnapshot());
        Assert.Equal("max_age", age.Tags[ServerConnectionAgeMetrics.ReasonTag]);
    }

    [Fact]
    public async Task UseServerConnectionAge_EndpointsRebuiltByAConfigurationReload_OneSilentCloserPerHost()
    {
        // Kestrel builds an endpoint's connection pipeline at each bind; a configuration reload rebinds the endpoints it
        // changed. The closer of silent connections at shutdown registers on ApplicationStopping, so one per build
        // would stay reachable for the host's life: every build must share the host's one closer.
        var configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["Kestrel:Endpoints:Grpc:Url"] = "http://127.0.0.1:0",
                ["Kestrel:Endpoints:Grpc:Protocols"] = "Http2",
                ["Kestrel:Endpoints:Other:Url"] = "http://127.0.0.1:0",
                ["Kestrel:Endpoints:Other:Protocols"] = "Http2",
            })
            .Build();
        var middlewares = new ConcurrentQueue<object?>();
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Services.AddServerConnectionAge();
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.Configure(configuration.GetSection("Kestrel"), reloadOnChange: true);
            kestrel.ConfigureEndpointDefaults(listen =>
            {
                // Added first, so its "next" is the connection age middleware's delegate.
                listen.Use(next =>
                {
                    middlewares.Enqueue(next.Target);
                    return next;
                });
                listen.UseServerConnectionAge();
            });
        });
        await using var app = builder.Build();
        await app.StartAsync();
        Assert.Equal(2, middlewares.Count);

        configuration["Kestrel:Endpoints:Grpc:Protocols"] = "Http1AndHttp2";
        configuration.Reload();

        // Kestrel rebinds on the reload token's callback, on its own; on a loaded machine that may take seconds.
        await Poll.UntilAsync(() => middlewares.Count == 3, "Kestrel to rebind the changed endpoint");
        var closers = middlewares.Select(m => Assert.IsType<ServerConnectionAgeMiddleware>(m).SilentCloser).ToList();
        Assert.NotNull(closers[0]);
        Assert.All(closers, closer => Assert.Same(closers[0], closer));
        await app.StopAsync();
    }
}
