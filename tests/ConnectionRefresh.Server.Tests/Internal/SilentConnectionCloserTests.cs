using System.IO.Pipelines;
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

    [Fact]
    public async Task ApplicationStopping_ClientBytesInTheTransportsPipeNotYetHandedToKestrel_ConnectionIsNotShut()
    {
        // The transport has received the client's preface from the socket (Available is 0 again) and completed Kestrel's
        // pending read, whose continuation waits for its thread-pool hop (held here by the pipe's scheduler): ClientSentData
        // is still false. A FIN now would fail the client's handshake: its SETTINGS could no longer be answered.
        await using var pair = await SocketPair.ConnectAsync();
        using var lifetime = new FakeLifetime();
        var hop = new HeldScheduler();
        var clientToServer = new Pipe(new PipeOptions(readerScheduler: hop, useSynchronizationContext: false));
        var transport = pair.Track(lifetime, clientToServer.Reader);
        var kestrelRead = transport.Input.ReadAsync();
        await clientToServer.Writer.WriteAsync("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray());
        Assert.False(kestrelRead.IsCompleted);

        lifetime.StopApplication();

        Assert.False(transport.ClientSentData);
        Assert.Equal(0, pair.Server.Available);
        Assert.Equal(1, pair.Server.Send(new byte[] { 0 })); // a socket shut for sending throws here
        hop.RunAll();
        var read = await Poll.WithTimeout(kestrelRead.AsTask(), "Kestrel's read");
        Assert.Equal(24, read.Buffer.Length);
        Assert.True(transport.ClientSentData);
    }

    [Fact]
    public async Task ApplicationStopping_ClientBytesInThePipeBeforeKestrelsFirstRead_ConnectionIsNotShutAndBytesStay()
    {
        // A connection Kestrel has not begun to read yet: the bytes are in the pipe with no read going. The check looks
        // without consuming anything: Kestrel's first read still gets them.
        await using var pair = await SocketPair.ConnectAsync();
        using var lifetime = new FakeLifetime();
        var clientToServer = new Pipe();
        var transport = pair.Track(lifetime, clientToServer.Reader);
        await clientToServer.Writer.WriteAsync("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray());

        lifetime.StopApplication();

        Assert.Equal(1, pair.Server.Send(new byte[] { 0 }));
        var read = await Poll.WithTimeout(transport.Input.ReadAsync().AsTask(), "Kestrel's read");
        Assert.Equal(24, read.Buffer.Length);
        Assert.True(transport.ClientSentData);
    }

    [Fact]
    public async Task ApplicationStopping_KestrelReadPendingAndClientSentNothing_SendingSideIsShutAndReadStillPending()
    {
        // The usual spare socket: Kestrel waits in its read, nothing arrived. Still shut, and Kestrel's read untouched.
        await using var pair = await SocketPair.ConnectAsync();
        using var lifetime = new FakeLifetime();
        var clientToServer = new Pipe();
        var transport = pair.Track(lifetime, clientToServer.Reader);
        var kestrelRead = transport.Input.ReadAsync();

        lifetime.StopApplication();

        Assert.Throws<SocketException>(() => pair.Server.Send(new byte[] { 0 }));
        Assert.False(kestrelRead.IsCompleted);
        await clientToServer.Writer.WriteAsync(new byte[] { 1 });
        var read = await Poll.WithTimeout(kestrelRead.AsTask(), "Kestrel's read");
        Assert.Equal(1, read.Buffer.Length);
    }

    /// <summary>A pipe scheduler that holds continuations until <see cref="RunAll"/>: the thread-pool hop, made to last.</summary>
    private sealed class HeldScheduler : PipeScheduler
    {
        private readonly Queue<(Action<object?> Action, object? State)> _queue = new();

        public override void Schedule(Action<object?> action, object? state)
        {
            lock (_queue)
            {
                _queue.Enqueue((action, state));
            }
        }

        public void RunAll()
        {
            while (true)
            {
                (Action<object?> Action, object? State) next;
                lock (_queue)
                {
                    if (!_queue.TryDequeue(out next))
                    {
                        return;
                    }
                }

                next.Action(next.State);
            }
        }
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
        public LingeringTransport Track(IHostApplicationLifetime lifetime, PipeReader? input = null)
        {
            var connection = new FakeConnection("c0");
            connection.Features.Set<IConnectionSocketFeature>(new SocketFeature(Server));
            var transport = new LingeringTransport(
                input is null ? connection.Transport : new DuplexPipe(input, connection.Transport.Output));
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

    private sealed record DuplexPipe(PipeReader Input, PipeWriter Output) : IDuplexPipe;

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
