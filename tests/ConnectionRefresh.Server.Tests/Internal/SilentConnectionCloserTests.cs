using System.Net;
using System.Net.Sockets;
using ConnectionRefresh.Server.Internal;
using ConnectionRefresh.Server.Tests.TestSupport;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.Extensions.Hosting;

namespace ConnectionRefresh.Server.Tests.Internal;

/// <summary>
/// What <see cref="SilentConnectionCloser"/> does to a connection when the application starts stopping: real loopback
/// sockets, a transport that nobody reads (Kestrel has not read the client's bytes), a fake application lifetime.
/// </summary>
public sealed class SilentConnectionCloserTests
{
    [Fact]
    public async Task ApplicationStopping_ClientSentNothing_SendingSideIsShut()
    {
        await using var pair = await SocketPair.ConnectAsync();
        using var lifetime = new FakeLifetime();
        var transport = pair.Track(lifetime);

        lifetime.StopApplication();

        Assert.False(transport.ClientSentData);
        Assert.Throws<SocketException>(() => pair.Server.Send(new byte[] { 0 }));
        using var endOfStream = new CancellationTokenSource(Poll.DefaultTimeout);
        Assert.Equal(0, await pair.Client.ReceiveAsync(new byte[16], SocketFlags.None, endOfStream.Token));
    }

    [Fact]
    public async Task ApplicationStopping_ClientBytesNotYetReceivedByTheTransport_ConnectionIsNotShut()
    {
        // The client has just sent its preface (it took its spare socket), but the bytes still wait in the server's
        // socket: the transport has not received them (one hop through Kestrel's I/O queue, longer on a loaded machine),
        // so ClientSentData is still false. The client is not silent: a FIN now would fail its handshake and its call,
        // where Kestrel's GOAWAY, a moment later, refuses the call and the client retries it elsewhere.
        await using var pair = await SocketPair.ConnectAsync();
        using var lifetime = new FakeLifetime();
        var transport = pair.Track(lifetime);
        await pair.Client.SendAsync("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray(), SocketFlags.None);
        await Poll.UntilAsync(() => pair.Server.Available > 0, "the client's bytes to reach the server's socket");

        lifetime.StopApplication();

        Assert.False(transport.ClientSentData);
        Assert.Equal(1, pair.Server.Send(new byte[] { 0 })); // a socket shut for sending throws here
    }

    private sealed class SocketPair : IAsyncDisposable
    {
        private readonly TcpListener _listener;

        private SocketPair(TcpListener listener, Socket client, Socket server)
        {
            _listener = listener;
            Client = client;
            Server = server;
        }

        public Socket Client { get; }

        public Socket Server { get; }

        public static async Task<SocketPair> ConnectAsync()
        {
            var listener = new TcpListener(IPAddress.Loopback, 0);
            listener.Start();
            var client = new Socket(SocketType.Stream, ProtocolType.Tcp);
            await client.ConnectAsync((IPEndPoint)listener.LocalEndpoint);
            var server = await listener.AcceptSocketAsync();
            return new SocketPair(listener, client, server);
        }

        /// <summary>Tracks the server side as a connection of a host with <paramref name="lifetime"/>.</summary>
        public LingeringTransport Track(IHostApplicationLifetime lifetime)
        {
            var connection = new FakeConnection("c0");
            connection.Features.Set<IConnectionSocketFeature>(new SocketFeature(Server));
            var transport = new LingeringTransport(connection.Transport);
            Assert.True(SilentConnectionCloser.For(lifetime)!.Add(connection, transport));
            return transport;
        }

        public ValueTask DisposeAsync()
        {
            Client.Dispose();
            Server.Dispose();
            _listener.Stop();
            _listener.Dispose();
            return ValueTask.CompletedTask;
        }
    }

    private sealed class SocketFeature(Socket socket) : IConnectionSocketFeature
    {
        public Socket Socket => socket;
    }

    private sealed class FakeLifetime : IHostApplicationLifetime, IDisposable
    {
        private readonly CancellationTokenSource _stopping = new();

        public CancellationToken ApplicationStarted => CancellationToken.None;

        public CancellationToken ApplicationStopping => _stopping.Token;

        public CancellationToken ApplicationStopped => CancellationToken.None;

        public void StopApplication() => _stopping.Cancel();

        public void Dispose() => _stopping.Dispose();
    }
}
