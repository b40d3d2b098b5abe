using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using ConnectionRefresh.Protos;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>
/// Real Kestrel gRPC "pods" on distinct loopback addresses (127.0.x.y, all of 127/8 is local on Linux)
/// sharing one port, as pods of a Deployment share their container port. One Kestrel instance listens on
/// every address; each Greeter reply's <c>instance</c> is the local address that took the connection, so
/// a test can tell the pods apart. <see cref="CloseConnections"/> makes a pod close its connections gracefully, as a
/// server-side max connection age does.
/// </summary>
internal sealed class GreeterPods : IAsyncDisposable
{
    private static int s_nextAddress;
    private readonly WebApplication _app;
    private readonly ConcurrentDictionary<string, ConnectionContext> _connections;
    private readonly ConcurrentDictionary<string, bool> _closing = new();

    private GreeterPods(WebApplication app, ConcurrentDictionary<string, ConnectionContext> connections, IReadOnlyList<string> ips, int port)
    {
        _app = app;
        _connections = connections;
        Ips = ips;
        Port = port;
    }

    /// <summary>The pod IPs.</summary>
    public IReadOnlyList<string> Ips { get; }

    /// <summary>The port every pod listens on.</summary>
    public int Port { get; }

    /// <summary>Starts <paramref name="count"/> pods; retries on another port if one address:port is taken.</summary>
    public static async Task<GreeterPods> StartAsync(int count)
    {
        for (var attempt = 0; ; attempt++)
        {
            var ips = Allocate(count);
            var port = FreePort(ips[0]);
            var connections = new ConcurrentDictionary<string, ConnectionContext>();
            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            builder.Services.AddGrpc();
            builder.WebHost.ConfigureKestrel(kestrel =>
            {
                foreach (var ip in ips)
                {
                    kestrel.Listen(IPAddress.Parse(ip), port, listen =>
                    {
                        listen.Protocols = HttpProtocols.Http2;
                        listen.Use(next => async connection =>
                        {
                            connections[connection.ConnectionId] = connection;
                            try
                            {
                                await next(connection);
                            }
                            finally
                            {
                                connections.TryRemove(connection.ConnectionId, out _);
                            }
                        });
                    });
                }
            });
            var app = builder.Build();
            app.MapGrpcService<InstanceGreeter>();
            try
            {
                await app.StartAsync();
                return new GreeterPods(app, connections, ips, port);
            }
            catch (IOException) when (attempt < 5)
            {
                await app.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// Asks every open connection to <paramref name="ip"/> not asked before to close gracefully: Kestrel sends an HTTP/2 GOAWAY, lets the
    /// running calls finish and then closes the connection, as a server-side max connection age does.
    /// </summary>
    /// <returns>How many connections were asked to close.</returns>
    public int CloseConnections(string ip)
    {
        var closed = 0;
        foreach (var connection in _connections.Values)
        {
            if (connection.LocalEndPoint is IPEndPoint local && local.Address.ToString() == ip &&
                connection.Features.Get<IConnectionLifetimeNotificationFeature>() is { } lifetime &&
                _closing.TryAdd(connection.ConnectionId, true))
            {
                lifetime.RequestClose();
                closed++;
            }
        }

        return closed;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    private static string[] Allocate(int count)
    {
        // 127.0.20.1 onwards; distinct per process so parallel test classes never share a pod address.
        var first = Interlocked.Add(ref s_nextAddress, count) - count;
        return Enumerable.Range(first, count).Select(i => $"127.0.{20 + (i / 250)}.{1 + (i % 250)}").ToArray();
    }

    private static int FreePort(string ip)
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Parse(ip), 0));
        return ((IPEndPoint)socket.LocalEndPoint!).Port;
    }

    private sealed class InstanceGreeter : Greeter.GreeterBase
    {
        public override Task<HelloReply> SayHello(HelloRequest request, ServerCallContext context) =>
            Task.FromResult(new HelloReply
            {
                Message = context.Host, // the :authority the client sent
                Instance = context.GetHttpContext().Connection.LocalIpAddress!.ToString(),
            });
    }
}
