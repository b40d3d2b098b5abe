using System.Diagnostics;
using System.Net.Sockets;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Server.Internal;
using ConnectionRefresh.Server.Tests.TestSupport;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Hosting;

namespace ConnectionRefresh.Server.Tests.Integration;

/// <summary>
/// Kestrel ends HTTP/2 connections by itself, without <c>RequestClose</c> and without an abort: at its keep-alive
/// timeout (<c>KestrelServerLimits.KeepAliveTimeout</c>: GOAWAY NO_ERROR, then it finishes) and after a protocol error
/// (GOAWAY with the error code, then it finishes). Neither goes through the connection age, yet a client that just
/// picked the connection races that GOAWAY the same way. Real Kestrel on loopback, real clocks.
/// </summary>
public sealed class KestrelInitiatedCloseTests
{
    private static readonly TimeSpan KeepAliveTimeout = TimeSpan.FromSeconds(2);

    private static Task<GreeterTestHost> StartAsync(ConnectionEndProbe probe, TaskCompletionSource kestrelDone, TimeSpan? keepAliveTimeout = null) =>
        probe.StartHostAsync(kestrelDone, kestrel => kestrel.Limits.KeepAliveTimeout = keepAliveTimeout ?? KeepAliveTimeout);

    [Fact]
    public async Task KeepAliveTimeout_IdleGrpcConnection_SocketStaysOpenAfterTheGoAwayUntilTheClientClosedItsSide()
    {
        var probe = new ConnectionEndProbe();
        var kestrelDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var host = await StartAsync(probe, kestrelDone);
        using var gated = new GatedGrpcClient(host.Address);
        var client = gated.Client;
        await client.SayHelloAsync(new HelloRequest { Name = "a" });
        var connection = Assert.Single(probe.Connections);
        var clientStream = gated.SingleStream;

        // The connection is idle now: Kestrel's keep-alive timeout (2 s) runs. The client reads nothing until Kestrel
        // has sent its GOAWAY and finished with the connection, so that the client cannot close first (on loopback it
        // is otherwise often quick enough to, which hides what happens over a real network).
        clientStream.HoldReads();
        await Poll.WithTimeout(kestrelDone.Task, "Kestrel's keep-alive timeout to finish the idle connection");
        var released = Stopwatch.GetTimestamp();
        clientStream.ReleaseReads();

        // The client read the GOAWAY and closed its side while the server still held the socket open; without the
        // linger, the socket closes as soon as Kestrel is done and the server never reads the client's end.
        var result = await Poll.WithTimeout(connection, "the connection middleware to return");
        Assert.True(result.ClientEndReadBeforeReturn, "the server should keep the socket open until the client closed its side");
        var lingered = Stopwatch.GetElapsedTime(released, result.ReturnedAt);
        Assert.True(lingered < ServerConnectionAgeDefaults.MaxGoAwayLinger, $"the linger lasted {lingered} after the client could read");

        // Kestrel's close, not the connection age's; and the client simply moves on to a new connection.
        Assert.Equal(0, host.CloseCount);
        Assert.Equal(0, host.AbortCount);
        await client.SayHelloAsync(new HelloRequest { Name = "b" });
        Assert.Equal(2, host.ConnectionsAccepted);
    }

    [Fact]
    public async Task KeepAliveTimeout_ClientNeverCloses_SocketClosesAtTheLingerBound()
    {
        var probe = new ConnectionEndProbe();
        var kestrelDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var host = await StartAsync(probe, kestrelDone, keepAliveTimeout: TimeSpan.FromSeconds(1));
        using var client = await RawHttp2Client.ConnectAsync(host.Address);
        var connection = Assert.Single(probe.Connections);

        // Kestrel's keep-alive GOAWAY: NO_ERROR, last stream 0 (no stream was ever opened).
        var goAway = await client.ReadUntilAsync(RawHttp2Client.GoAwayFrame);
        Assert.Equal(new byte[8], goAway.Payload);
        await Poll.WithTimeout(kestrelDone.Task, "Kestrel to finish the connection after its GOAWAY");
        var kestrelFinished = Stopwatch.GetTimestamp();

        // The socket stays open for the client, which never closes its side: it closes at the bound, no later.
        Assert.Empty(await client.ReadFrameTypesToEndAsync());
        var heldFor = Stopwatch.GetElapsedTime(kestrelFinished);
        var lowerBound = ServerConnectionAgeDefaults.MaxGoAwayLinger - TimeSpan.FromMilliseconds(500);
        Assert.True(heldFor >= lowerBound && heldFor < Poll.DefaultTimeout, $"the socket closed {heldFor} after Kestrel finished");
        Assert.False((await Poll.WithTimeout(connection, "the connection middleware to return")).ClientEndReadBeforeReturn);
    }

    [Fact]
    public async Task ProtocolError_KestrelSendsGoAwayWithTheError_SocketStaysOpenUntilTheClientClosedItsSide()
    {
        var probe = new ConnectionEndProbe();
        var kestrelDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var host = await StartAsync(probe, kestrelDone, keepAliveTimeout: TimeSpan.FromMinutes(10));
        using var client = await RawHttp2Client.ConnectAsync(host.Address);
        var connection = Assert.Single(probe.Connections);

        // A PING on stream 2 (PINGs belong on stream 0; even stream ids are the server's): a connection error.
        await client.Stream.WriteAsync((byte[])[0, 0, 8, RawHttp2Client.PingFrame, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
        var goAway = await client.ReadUntilAsync(RawHttp2Client.GoAwayFrame);
        Assert.Equal(1, goAway.Payload[7]); // PROTOCOL_ERROR
        await Poll.WithTimeout(kestrelDone.Task, "Kestrel to finish the connection after its GOAWAY");

        // Kestrel is done, the socket still open: the client closes its side now, and the server reads that end.
        client.Tcp.Client.Shutdown(SocketShutdown.Send);
        Assert.Empty(await client.ReadFrameTypesToEndAsync());
        var result = await Poll.WithTimeout(connection, "the connection middleware to return");
        Assert.True(result.ClientEndReadBeforeReturn, "the server should keep the socket open until the client closed its side");
    }
}
