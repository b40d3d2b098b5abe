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

/// <summary>
/// The socket that listens on a loopback port now, identified so that whether that very socket still listens can be asked
/// after it was meant to close. A port alone cannot tell: once it is closed, any listener of a test running in parallel
/// (this process or another: Kestrel servers, ClusterIPs, all on ports the kernel hands out) may be given the same port,
/// and a connect probe then finds it open. On Linux the socket is told by its inode in /proc/net/tcp, which another socket
/// on the reused port does not have; elsewhere only the port can be probed (<see cref="RawSockets.IsListening"/>).
/// </summary>
internal sealed class LoopbackListener
{
    private const string ListenState = "0A";
    private readonly int _port;
    private readonly string? _inode;

    private LoopbackListener(int port, string? inode)
    {
        _port = port;
        _inode = inode;
    }

    /// <summary>The socket listening on 127.0.0.1:<paramref name="port"/> now (on Linux it must be found, or this throws).</summary>
    public static LoopbackListener On(int port)
    {
        if (!OperatingSystem.IsLinux())
        {
            return new LoopbackListener(port, null);
        }

        // Only one socket can listen on an address and port (no SO_REUSEPORT here), so this is the one.
        var inode = ListeningInodes(port).SingleOrDefault()
            ?? throw new InvalidOperationException($"Nothing listens on 127.0.0.1:{port} in /proc/net/tcp.");
        return new LoopbackListener(port, inode);
    }

    /// <summary>Whether this socket still listens (elsewhere than Linux: whether something accepts connections on its port).</summary>
    public bool IsListening => _inode is null ? RawSockets.IsListening(_port) : ListeningInodes(_port).Contains(_inode);

    /// <summary>
    /// Polls until this socket no longer listens; a <see cref="TimeoutException"/> naming <paramref name="whose"/> after
    /// <see cref="Poll.DefaultTimeout"/>. Polled, not checked once: a child process forked by a parallel test (the iptables
    /// tests run ip/iptables) holds a copy of every descriptor until its exec, which can keep the socket listening for
    /// ~100 ms after its owner closed it.
    /// </summary>
    public Task UntilClosedAsync(string whose) => Poll.UntilAsync(() => !IsListening, $"{whose} listening socket ({this}) to close");

    public override string ToString() => $"127.0.0.1:{_port}{(_inode is null ? "" : $" (socket inode {_inode})")}";

    // /proc/net/tcp: "sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...", the
    // address as little-endian hex (127.0.0.1 is 0100007F), the port as big-endian hex, state 0A for LISTEN.
    // The file is not a snapshot: it is generated a buffer at a time, and each read resumes the walk of the kernel's socket
    // hash tables at the bucket and offset where the last one stopped. A socket opened or closed before that point in the
    // same bucket (parallel tests open and close listeners all the time) shifts the rest, so one read of the file can skip
    // a line (On: "nothing listens"; IsListening: closed too early) or repeat one (On: two inodes for one port). Hence
    // distinct inodes, and the file read again until two consecutive reads agree about this port.
    private static HashSet<string> ListeningInodes(int port)
    {
        var previous = ReadListeningInodes(port);
        for (var attempt = 0; attempt < 20; attempt++)
        {
            var current = ReadListeningInodes(port);
            if (current.SetEquals(previous))
            {
                return current;
            }

            previous = current;
        }

        throw new InvalidOperationException($"/proc/net/tcp did not read the same twice in a row for 127.0.0.1:{port}.");
    }

    private static HashSet<string> ReadListeningInodes(int port)
    {
        var local = $"0100007F:{port:X4}";
        return [.. File.ReadLines("/proc/net/tcp")
            .Skip(1)
            .Select(line => line.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(fields => fields.Length > 9 && fields[1] == local && fields[3] == ListenState)
            .Select(fields => fields[9])];
    }
}
