using System.Net;
using System.Net.Sockets;
using ConnectionRefresh.Protos;
using Grpc.Net.Client;

namespace ConnectionRefresh.Testing.Tests.TestSupport;

/// <summary>A gRPC client with its own SocketsHttpHandler, so with its own TCP connection(s).</summary>
internal sealed class TestClient : IDisposable
{
    public TestClient(Uri address)
    {
        Channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions { HttpHandler = new SocketsHttpHandler() });
        Greeter = new Greeter.GreeterClient(Channel);
    }

    public GrpcChannel Channel { get; }

    public Greeter.GreeterClient Greeter { get; }

    public async Task<string> HelloAsync(int delayMs = 0, TimeSpan? deadline = null)
    {
        var reply = await Greeter.SayHelloAsync(
            new HelloRequest { Name = "test", DelayMs = delayMs },
            deadline: DateTime.UtcNow + (deadline ?? TimeSpan.FromSeconds(30)));
        return reply.Instance;
    }

    public void Dispose() => Channel.Dispose();
}

internal static class RawSockets
{
    public static async Task<Socket> ConnectAsync(Uri address)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, address.Port));
        return socket;
    }

    /// <summary>Whether something accepts TCP connections on this loopback port now.</summary>
    public static bool IsListening(int port)
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Connect(new IPEndPoint(IPAddress.Loopback, port));
            return true;
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionRefused)
        {
            return false;
        }
    }
}
