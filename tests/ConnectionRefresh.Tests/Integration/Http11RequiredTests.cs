using System.Diagnostics.Metrics;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Tests.Infrastructure;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;

namespace ConnectionRefresh.Tests.Integration;

/// <summary>A server that answers HTTP/2 with GOAWAY HTTP_1_1_REQUIRED is misconfigured; its connections are not lost.</summary>
public sealed class Http11RequiredTests
{
    private const uint Http11Required = 0xd;

    [Fact]
    public async Task Calls_ServerSendsGoAwayHttp11Required_FailAsWithoutTheLibraryWithOneErrorAndNoRetirement()
    {
        await using var server = new GoAwayServer(Http11Required);
        using var plain = GreeterClientHost.Plain(server.Address);
        var expected = await Assert.ThrowsAsync<RpcException>(() => CallAsync(plain));
        using var host = GreeterClientHost.Create(server.Address, b => b.AddConnectionRefresh(), services => services.AddFakeLogging());
        using var retired = new MetricCollector<long>(host.Services.GetRequiredService<IMeterFactory>(), "ConnectionRefresh", "connectionrefresh.connections.retired");

        for (var i = 0; i < 3; i++)
        {
            // Before: replaced by a "connection lost" Unavailable, which retry policies retry into the same answer.
            var failure = await Assert.ThrowsAsync<RpcException>(() => CallAsync(host));
            Assert.Equal(StatusCode.Internal, expected.StatusCode); // the gRPC spec's mapping of HTTP_1_1_REQUIRED
            Assert.Equal(expected.StatusCode, failure.StatusCode);
            Assert.Equal(expected.Status.Detail, failure.Status.Detail);
        }

        // Before: a Warning "lost a connection" (event 3) and a retirement (connection_failure) per call.
        var logs = host.Services.GetRequiredService<FakeLogCollector>().GetSnapshot().Where(r => r.Category == "ConnectionRefresh").ToList();
        var error = Assert.Single(logs, r => r.Level >= LogLevel.Warning);
        Assert.Equal((6, LogLevel.Error), (error.Id.Id, error.Level));
        Assert.Contains("requires HTTP/1.1", error.Message, StringComparison.Ordinal);
        Assert.Contains("gRPC needs HTTP/2", error.Message, StringComparison.Ordinal);
        Assert.Empty(retired.GetMeasurementSnapshot());
        Assert.True(server.GoAways >= 4, $"{server.GoAways} GOAWAY frames sent"); // the server really answered every call so
    }

    private static Task<HelloReply> CallAsync(GreeterClientHost host)
        => host.Client.SayHelloAsync(new HelloRequest { Name = "x" }, deadline: DateTime.UtcNow.AddSeconds(60)).ResponseAsync;
}
