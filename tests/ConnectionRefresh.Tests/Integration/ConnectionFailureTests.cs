using System.Collections.Concurrent;
using System.Diagnostics.Tracing;
using System.Net;
using System.Net.Sockets;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using ConnectionRefresh.Tests.Infrastructure;
using Grpc.Core;

namespace ConnectionRefresh.Tests.Integration;

/// <summary>What gRPC callers see when a connection cannot be made, and what the runtime's telemetry sees.</summary>
public sealed class ConnectionFailureTests
{
    [Fact]
    public async Task Call_ServerNeverAcceptsTheConnection_FailsUnavailableAfterConnectTimeout()
    {
        // A listener with a full accept queue: Linux drops further SYNs, so connecting hangs like connecting to a
        // dead node's address. One connection fills a queue of length 0.
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(0);
        var port = ((IPEndPoint)listener.LocalEndPoint!).Port;
        using var filler = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await filler.ConnectAsync(IPAddress.Loopback, port);
        using var host = GreeterClientHost.WithRefresh(new Uri($"http://127.0.0.1:{port}"), o => o.ConnectTimeout = TimeSpan.FromMilliseconds(500));

        var failure = await Assert.ThrowsAsync<RpcException>(
            () => host.Client.SayHelloAsync(new HelloRequest { Name = "x" }, deadline: DateTime.UtcNow.AddSeconds(60)).ResponseAsync);

        // SocketsHttpHandler reports ConnectTimeout as a cancellation, which grpc-dotnet would pass on as Cancelled.
        Assert.Equal(StatusCode.Unavailable, failure.StatusCode);
        Assert.Contains("ConnectTimeout", failure.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Call_WithRefresh_IsReportedOnceToTheHttpEventSource()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var listener = new RequestStartListener(cluster.Address.Port);
        using var host = GreeterClientHost.WithRefresh(cluster.Address);

        for (var i = 0; i < 3; i++)
        {
            await host.Client.SayHelloAsync(new HelloRequest { Name = "t" });
        }

        // grpc-dotnet's invoker reports each call; the library sends below it without reporting it again.
        Assert.Equal(3, listener.Starts.Count(path => path.EndsWith("/SayHello", StringComparison.Ordinal)));
    }

    /// <summary>Collects the System.Net.Http EventSource's RequestStart events for one port.</summary>
    private sealed class RequestStartListener : EventListener
    {
        private readonly int _port;

        public RequestStartListener(int port) => _port = port;

        public ConcurrentQueue<string> Starts { get; } = new();

        protected override void OnEventSourceCreated(EventSource eventSource)
        {
            if (eventSource.Name == "System.Net.Http")
            {
                EnableEvents(eventSource, EventLevel.Informational);
            }
        }

        protected override void OnEventWritten(EventWrittenEventArgs eventData)
        {
            // Events can arrive before the constructor body has set the port (still 0, which no request uses).
            if (eventData.EventName == "RequestStart" && eventData.Payload is { Count: > 3 } payload
                && payload[2] is int port && port == _port)
            {
                Starts.Enqueue((string)payload[3]!);
            }
        }
    }
}
