using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using ConnectionRefresh.Protos;
using Grpc.Net.Client;

namespace ConnectionRefresh.Server.Tests.TestSupport;

/// <summary>
/// A real GrpcChannel whose connections are <see cref="GatedClientStream"/>s, so that a test can hold what the client
/// reads from the server. Thread-safe: the handler adds streams under a lock.
/// </summary>
internal sealed class GatedGrpcClient : IDisposable
{
    private readonly List<GatedClientStream> _streams = [];
    private readonly Lock _gate = new();
    private readonly SocketsHttpHandler _handler;
    private readonly GrpcChannel _channel;

    /// <param name="address">The server; <c>https</c> for TLS (the handler's, over the gated stream).</param>
    /// <param name="serverCertificate">Over TLS, the only certificate trusted.</param>
    public GatedGrpcClient(Uri address, X509Certificate2? serverCertificate = null)
    {
        _handler = new SocketsHttpHandler
        {
            ConnectCallback = async (context, cancellationToken) =>
            {
                var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                await socket.ConnectAsync(context.DnsEndPoint, cancellationToken);
                var stream = new GatedClientStream(new NetworkStream(socket, ownsSocket: true));
                lock (_gate)
                {
                    _streams.Add(stream);
                }

                return stream;
            },
        };
        if (serverCertificate is not null)
        {
            _handler.SslOptions.RemoteCertificateValidationCallback = (_, presented, _, _) =>
                presented?.GetCertHashString() == serverCertificate.GetCertHashString();
        }

        _channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions { HttpHandler = _handler });
        Client = new Greeter.GreeterClient(_channel);
    }

    public Greeter.GreeterClient Client { get; }

    /// <summary>The only connection the client has opened so far.</summary>
    public GatedClientStream SingleStream
    {
        get
        {
            lock (_gate)
            {
                return Assert.Single(_streams);
            }
        }
    }

    /// <summary>
    /// Makes one call, which leaves its connection idle, then holds what the client reads on that connection and its
    /// close (see <see cref="GatedClientStream"/>): the probe's record of the connection, and its gated stream.
    /// </summary>
    public async Task<(Task<ConnectionEndProbe.Result> Connection, GatedClientStream Stream)> CallThenHoldAsync(ConnectionEndProbe probe)
    {
        await Client.SayHelloAsync(new HelloRequest { Name = "a" });
        var connection = Assert.Single(probe.Connections);
        var stream = SingleStream;
        stream.HoldReads();
        stream.HoldClose();
        return (connection, stream);
    }

    public void Dispose()
    {
        // A test that failed may have left a stream's close held: the sockets close with the client.
        lock (_gate)
        {
            foreach (var stream in _streams)
            {
                stream.ReleaseReads();
                stream.ReleaseClose();
            }
        }

        _channel.Dispose();
        _handler.Dispose();
    }
}
