using System.Diagnostics;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using ConnectionRefresh.Tests.Infrastructure;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Testing;

namespace ConnectionRefresh.Tests.Integration;

public sealed class KeepAliveTests
{
    [Fact]
    public async Task StreamOnRetiredConnection_PeerGoesSilent_FailsUnavailableWithinKeepAliveBound()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var host = GreeterClientHost.WithRefresh(cluster.Address, o =>
        {
            o.MaxConnectionAge = TimeSpan.FromSeconds(1);
            o.KeepAlivePingDelay = TimeSpan.FromSeconds(1);
            o.KeepAlivePingTimeout = TimeSpan.FromSeconds(1);
        });

        // A long server stream (100 messages 100 ms apart), then a unary call after the age retires its connection.
        // The 60 s deadline only keeps a broken build from hanging the suite; keepalive must end the stream long before.
        using var stream = host.Client.StreamHellos(new StreamRequest { Name = "s", Count = 100, DelayMs = 100 }, deadline: DateTime.UtcNow.AddSeconds(60));
        Assert.True(await stream.ResponseStream.MoveNext());
        var retiredAt = Stopwatch.StartNew();
        while (retiredAt.Elapsed < TimeSpan.FromSeconds(1.5))
        {
            Assert.True(await stream.ResponseStream.MoveNext());
        }

        await host.Client.SayHelloAsync(new HelloRequest { Name = "after-age" });
        cluster.BlackHole(cluster.Pods[0]);
        var silentSince = Stopwatch.StartNew();

        var failure = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            while (await stream.ResponseStream.MoveNext())
            {
            }
        });

        Assert.Equal(StatusCode.Unavailable, failure.StatusCode);
        // Ping delay 1 s + ping timeout 1 s + SocketsHttpHandler's ~1 s heartbeat; 20 s leaves a loaded 2-core
        // machine ample room while staying far from the 60 s deadline a missing ping would run into.
        Assert.InRange(silentSince.Elapsed, TimeSpan.Zero, TimeSpan.FromSeconds(20));
    }

    [Fact]
    public async Task UnaryCall_PeerGoesSilentBeforeResponse_OuterHandlersSeeHttpRequestExceptionAndCallerUnavailable()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        var outer = new FailureRecordingHandler();
        using var host = GreeterClientHost.WithRefresh(
            cluster.Address,
            o =>
            {
                o.KeepAlivePingDelay = TimeSpan.FromSeconds(1);
                o.KeepAlivePingTimeout = TimeSpan.FromSeconds(1);
            },
            b => b.AddHttpMessageHandler(() => outer));
        await host.Client.SayHelloAsync(new HelloRequest { Name = "warm" });
        cluster.BlackHole(cluster.Pods[0]);

        // The call's headers go into the void: keepalive aborts the connection before any response arrives.
        var failure = await Assert.ThrowsAsync<RpcException>(
            () => host.Client.SayHelloAsync(new HelloRequest { Name = "x" }, deadline: DateTime.UtcNow.AddSeconds(60)).ResponseAsync);

        Assert.Equal(StatusCode.Unavailable, failure.StatusCode);
        // Without the library SocketsHttpHandler throws an HttpRequestException here, which AddStandardResilienceHandler
        // and Polly's HandleTransientHttpError retry; the library must not turn it into a type they do not retry.
        var seen = Assert.IsType<HttpRequestException>(outer.Failure);
        Assert.Equal(HttpRequestError.ConnectionError, seen.HttpRequestError);
        Assert.IsType<HttpIOException>(seen.InnerException);
    }

    [Fact]
    public async Task CallsOnOneConnection_PeerGoesSilent_ConnectionLossLoggedOnce()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var host = GreeterClientHost.Create(
            cluster.Address,
            b => b.AddConnectionRefresh(o =>
            {
                o.KeepAlivePingDelay = TimeSpan.FromSeconds(1);
                o.KeepAlivePingTimeout = TimeSpan.FromSeconds(1);
            }),
            services => services.AddFakeLogging());
        await host.Client.SayHelloAsync(new HelloRequest { Name = "warm" });
        cluster.BlackHole(cluster.Pods[0]);

        // Three calls wait on the same connection; keepalive aborts it and fails all three.
        var calls = Enumerable.Range(0, 3)
            .Select(i => host.Client.SayHelloAsync(new HelloRequest { Name = $"c{i}" }, deadline: DateTime.UtcNow.AddSeconds(60)).ResponseAsync)
            .ToList();
        foreach (var call in calls)
        {
            Assert.Equal(StatusCode.Unavailable, (await Assert.ThrowsAsync<RpcException>(() => call)).StatusCode);
        }

        // One connection was lost: one warning (event 3), not one per call that ran on it.
        var lost = host.Services.GetRequiredService<FakeLogCollector>().GetSnapshot().Where(r => r.Id.Id == 3 && r.Category == "ConnectionRefresh");
        Assert.Single(lost);
    }

    /// <summary>A user handler outside ConnectionRefresh (where resilience handlers sit) that keeps what it saw fail.</summary>
    private sealed class FailureRecordingHandler : DelegatingHandler
    {
        public Exception? Failure { get; private set; }

        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            try
            {
                return await base.SendAsync(request, cancellationToken);
            }
            catch (Exception exception)
            {
                Failure = exception;
                throw;
            }
        }
    }
}
