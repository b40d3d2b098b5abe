using System.Diagnostics;
using System.Net.Sockets;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Server.Internal;
using ConnectionRefresh.Server.Tests.TestSupport;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Hosting;

namespace ConnectionRefresh.Server.Tests.Integration;

/// <summary>
/// The host stops (a pod exits: SIGTERM, <c>IHost.StopAsync</c>) while clients hold HTTP/2 connections: Kestrel closes
/// each one gracefully (GOAWAY) and waits for its connection middleware. Real Kestrel on loopback, real clocks.
/// </summary>
public sealed class ShutdownTests
{
    private const byte SettingsFrame = 0x4;
    private const byte GoAwayFrame = 0x7;

    // The HTTP/2 client preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    private static readonly byte[] ClientPreface =
        [.. "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8, 0, 0, 0, SettingsFrame, 0, 0, 0, 0, 0];

    private static Task<GreeterTestHost> StartAsync(ConnectionEndProbe probe, TaskCompletionSource? kestrelDone = null) =>
        GreeterTestHost.StartAsync(
            _ => { },
            useConnectionAge: listen =>
            {
                // The probe sits outside the connection age: it sees what the server read before the socket closes.
                listen.Use(probe.Middleware);
                listen.UseServerConnectionAge();

                // Inside the connection age, right around Kestrel's HTTP handling: completes when Kestrel is done.
                listen.Use(next => async connection =>
                {
                    try
                    {
                        await next(connection);
                    }
                    finally
                    {
                        kestrelDone?.TrySetResult();
                    }
                });
            });

    [Fact]
    public async Task StopAsync_GrpcClientHoldsIdleConnection_SocketStaysOpenUntilTheClientClosedItsSide()
    {
        var probe = new ConnectionEndProbe();
        var kestrelDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var host = await StartAsync(probe, kestrelDone);
        var clientStreams = new List<GatedClientStream>();
        using var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (context, cancellationToken) =>
            {
                var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                await socket.ConnectAsync(context.DnsEndPoint, cancellationToken);
                var stream = new GatedClientStream(new NetworkStream(socket, ownsSocket: true));
                lock (clientStreams)
                {
                    clientStreams.Add(stream);
                }

                return stream;
            },
        };
        using var channel = GrpcChannel.ForAddress(host.Address, new GrpcChannelOptions { HttpHandler = handler });
        var client = new Greeter.GreeterClient(channel);
        await client.SayHelloAsync(new HelloRequest { Name = "a" });
        var connection = Assert.Single(probe.Connections);
        var clientStream = Assert.Single(clientStreams);

        // The client reads nothing until Kestrel has sent its GOAWAY and finished with the connection: on loopback the
        // client is otherwise often quick enough to close first, which hides what happens over a real network.
        clientStream.HoldReads();
        var stopping = host.StopAsync();
        await Poll.WithTimeout(kestrelDone.Task, "Kestrel to finish the idle connection after its GOAWAY");
        var stopwatch = Stopwatch.StartNew();
        clientStream.ReleaseReads();
        await Poll.WithTimeout(stopping, "the host to stop");
        var stopTook = stopwatch.Elapsed;

        // The client read the GOAWAY and closed its side while the server still held the socket open; without the
        // linger, the socket closes as soon as Kestrel is done and the server never reads the client's end.
        var result = await Poll.WithTimeout(connection, "the connection middleware to return");
        Assert.True(result.ClientEndReadBeforeReturn, "the server should keep the socket open until the client closed its side");

        // The client closes at once, so the linger ends far sooner than its bound.
        Assert.True(stopTook < ServerConnectionAgeDefaults.MaxGoAwayLinger, $"StopAsync took {stopTook} after the client could read");
        Assert.Equal(0, host.CloseCount);
    }

    [Fact]
    public async Task StopAsync_ClientNeverClosesAfterTheGoAway_SocketClosesAtTheLingerBound()
    {
        var probe = new ConnectionEndProbe();
        await using var host = await StartAsync(probe);
        using var tcp = await ConnectHttp2Async(host);
        var connection = Assert.Single(probe.Connections);

        var stopwatch = Stopwatch.StartNew();
        await Poll.WithTimeout(host.StopAsync(), "the host to stop");
        var stopTook = stopwatch.Elapsed;

        // Kestrel waits for the connection middleware: a client that never closes delays StopAsync by the bound, no more.
        var lowerBound = ServerConnectionAgeDefaults.MaxGoAwayLinger - TimeSpan.FromMilliseconds(500);
        Assert.True(stopTook >= lowerBound && stopTook < Poll.DefaultTimeout, $"StopAsync took {stopTook}");
        Assert.False((await connection).ClientEndReadBeforeReturn);
        Assert.Contains(GoAwayFrame, await ReadFrameTypesToEndAsync(tcp.GetStream()));
    }

    [Fact]
    public async Task StopAsync_ShutdownTimeoutEndsDuringTheLinger_ConnectionAbortedWithoutErrorOrWait()
    {
        var probe = new ConnectionEndProbe();
        await using var host = await StartAsync(probe);
        using var tcp = await ConnectHttp2Async(host);
        var connection = Assert.Single(probe.Connections);

        // The host's shutdown timeout ends while the connection lingers: Kestrel aborts it, and the linger ends then.
        var stopwatch = Stopwatch.StartNew();
        using var shutdownTimeout = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        await Poll.WithTimeout(host.StopAsync(shutdownTimeout.Token), "the host to stop");

        var result = await Poll.WithTimeout(connection, "the connection middleware to return");
        var returnedAfter = stopwatch.Elapsed - TimeProvider.System.GetElapsedTime(result.ReturnedAt);
        Assert.True(
            returnedAfter < ServerConnectionAgeDefaults.MaxGoAwayLinger - TimeSpan.FromSeconds(1),
            $"the connection middleware returned {returnedAfter} after the shutdown began");
        Assert.False(result.ClientEndReadBeforeReturn);
        await ReadFrameTypesToEndAsync(tcp.GetStream());
    }

    /// <summary>Opens a raw HTTP/2 connection that never closes by itself, once Kestrel serves it (its SETTINGS came).</summary>
    private static async Task<TcpClient> ConnectHttp2Async(GreeterTestHost host)
    {
        var tcp = new TcpClient();
        await tcp.ConnectAsync(host.Address.Host, host.Address.Port);
        var stream = tcp.GetStream();
        await stream.WriteAsync(ClientPreface);
        using var timeout = new CancellationTokenSource(Poll.DefaultTimeout);
        var header = new byte[9];
        await stream.ReadExactlyAsync(header, timeout.Token);
        Assert.Equal(SettingsFrame, header[3]);
        await stream.ReadExactlyAsync(new byte[PayloadLength(header)], timeout.Token);
        return tcp;
    }

    private static int PayloadLength(byte[] header) => (header[0] << 16) | (header[1] << 8) | header[2];

    /// <summary>The types of the frames the server sends until the connection ends (FIN or reset).</summary>
    private static async Task<List<byte>> ReadFrameTypesToEndAsync(NetworkStream stream)
    {
        using var timeout = new CancellationTokenSource(Poll.DefaultTimeout);
        var types = new List<byte>();
        var header = new byte[9];
        try
        {
            while (true)
            {
                await stream.ReadExactlyAsync(header, timeout.Token);
                types.Add(header[3]);
                await stream.ReadExactlyAsync(new byte[PayloadLength(header)], timeout.Token);
            }
        }
        catch (Exception ex) when (ex is EndOfStreamException or IOException)
        {
            return types;
        }
    }
}
