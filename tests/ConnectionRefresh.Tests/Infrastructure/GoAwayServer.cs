using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace ConnectionRefresh.Tests.Infrastructure;

/// <summary>
/// A loopback HTTP/2 (prior knowledge, h2c) server made of raw frames: on every connection it answers the preface with
/// SETTINGS and the first request with GOAWAY carrying <c>errorCode</c> and last stream id 0 (nothing processed), as a
/// server or proxy that refuses HTTP/2 does. Kestrel cannot be made to send an arbitrary GOAWAY code.
/// </summary>
internal sealed class GoAwayServer : IAsyncDisposable
{
    private const int FrameHeaderLength = 9;
    private const byte Headers = 0x1, Settings = 0x4, GoAway = 0x7;

    private readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
    private readonly CancellationTokenSource _stop = new();
    private readonly uint _errorCode;
    private readonly Task _accepting;
    private int _connections;
    private int _goAways;

    public GoAwayServer(uint errorCode)
    {
        _errorCode = errorCode;
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen();
        Address = new Uri($"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndPoint!).Port}");
        _accepting = AcceptAsync();
    }

    public Uri Address { get; }

    /// <summary>Connections accepted so far.</summary>
    public int Connections => Volatile.Read(ref _connections);

    /// <summary>GOAWAY frames sent so far.</summary>
    public int GoAways => Volatile.Read(ref _goAways);

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _listener.Dispose();
        await _accepting;
        _stop.Dispose();
    }

    private async Task AcceptAsync()
    {
        while (true)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptAsync(_stop.Token);
            }
            catch (Exception exception) when (exception is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                return;
            }

            Interlocked.Increment(ref _connections);
            _ = ServeAsync(socket);
        }
    }

    private async Task ServeAsync(Socket socket)
    {
        using (socket)
        {
            try
            {
                await using var stream = new NetworkStream(socket, ownsSocket: false);
                var token = _stop.Token;
                await stream.ReadExactlyAsync(new byte[24], token); // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                await stream.WriteAsync(Frame(Settings, []), token);

                var header = new byte[FrameHeaderLength];
                do
                {
                    await stream.ReadExactlyAsync(header, token);
                    await stream.ReadExactlyAsync(new byte[(header[0] << 16) | (header[1] << 8) | header[2]], token);
                }
                while (header[3] != Headers);

                var payload = new byte[8 + 17];
                BinaryPrimitives.WriteUInt32BigEndian(payload, 0); // last stream id: no request was processed
                BinaryPrimitives.WriteUInt32BigEndian(payload.AsSpan(4), _errorCode);
                Encoding.ASCII.GetBytes("HTTP/1.1 required", payload.AsSpan(8));
                await stream.WriteAsync(Frame(GoAway, payload), token);
                Interlocked.Increment(ref _goAways);

                // Close only after the client has: a close with unread data would send RST, which can overtake the GOAWAY.
                socket.Shutdown(SocketShutdown.Send);
                var sink = new byte[4096];
                while (await stream.ReadAsync(sink, token) > 0)
                {
                }
            }
            catch (Exception exception) when (exception is IOException or SocketException or OperationCanceledException or EndOfStreamException)
            {
            }
        }
    }

    private static byte[] Frame(byte type, ReadOnlySpan<byte> payload)
    {
        var frame = new byte[FrameHeaderLength + payload.Length];
        frame[0] = (byte)(payload.Length >> 16);
        frame[1] = (byte)(payload.Length >> 8);
        frame[2] = (byte)payload.Length;
        frame[3] = type;
        payload.CopyTo(frame.AsSpan(FrameHeaderLength)); // flags 0, stream 0
        return frame;
    }
}
