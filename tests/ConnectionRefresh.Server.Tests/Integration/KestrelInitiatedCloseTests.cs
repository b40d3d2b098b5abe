using System.Diagnostics;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Server.Internal;
using ConnectionRefresh.Server.Tests.TestSupport;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace ConnectionRefresh.Server.Tests.Integration;

/// <summary>
/// Kestrel ends HTTP/2 connections by itself, without <c>RequestClose</c> and without an abort: at its keep-alive
/// timeout (<c>KestrelServerLimits.KeepAliveTimeout</c>: GOAWAY NO_ERROR, then it finishes) and after a protocol error
/// (GOAWAY with the error code, then it finishes). Neither goes through the connection age. A client that just picked
/// the connection races the keep-alive GOAWAY, so that socket lingers; after an error GOAWAY it must close at once
/// (RFC 9113). Real Kestrel on loopback, real clocks.
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

        // The connection is idle after the call: Kestrel's keep-alive timeout (2 s) runs. The client reads nothing until
        // Kestrel has sent its GOAWAY and finished with the connection, and its end reaches the server only once the
        // connection age has decided on the hold, so that the client cannot close first (on loopback it is otherwise
        // often quick enough to, which hides what happens over a real network).
        var (connection, clientStream) = await gated.CallThenHoldAsync(probe);
        var released = await clientStream.ReleaseOnceKestrelIsDoneAsync(kestrelDone.Task, host);

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

    [Theory]
    [InlineData("ping-on-stream-2")] // PINGs belong on stream 0, and even stream ids are the server's: PROTOCOL_ERROR
    [InlineData("data-on-idle-stream")] // DATA on stream 1, which no HEADERS opened: PROTOCOL_ERROR
    [InlineData("oversized-frame")] // a frame longer than SETTINGS_MAX_FRAME_SIZE (16 384 by default): FRAME_SIZE_ERROR
    public async Task ProtocolError_KestrelSendsGoAwayWithTheError_SocketClosesWithoutWaitingForTheClient(string violation)
    {
        var probe = new ConnectionEndProbe();
        var kestrelDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var host = await StartAsync(probe, kestrelDone, keepAliveTimeout: TimeSpan.FromMinutes(10));
        using var client = await RawHttp2Client.ConnectAsync(host.Address);
        var connection = Assert.Single(probe.Connections);

        var (frame, errorCode) = ProtocolViolation(violation);
        await client.Stream.WriteAsync(frame);
        var goAway = await client.ReadUntilAsync(RawHttp2Client.GoAwayFrame);
        Assert.Equal(errorCode, goAway.Payload[7]);
        await Poll.WithTimeout(kestrelDone.Task, "Kestrel to finish the connection after its GOAWAY");
        var kestrelFinished = Stopwatch.GetTimestamp();

        // RFC 9113 (section 5.4.1): after a GOAWAY for a connection error the endpoint MUST close the TCP connection.
        // The client never closes its side here, so the socket ends only by the server's close: at once, not at the
        // linger's bound (5 s) that a graceful GOAWAY gets.
        Assert.Empty(await client.ReadFrameTypesToEndAsync());
        var closedAfter = Stopwatch.GetElapsedTime(kestrelFinished);
        Assert.True(
            closedAfter < ServerConnectionAgeDefaults.MaxGoAwayLinger - TimeSpan.FromSeconds(1),
            $"the socket closed {closedAfter} after Kestrel finished");
        Assert.False((await Poll.WithTimeout(connection, "the connection middleware to return")).ClientEndReadBeforeReturn);
    }

    [Fact]
    public async Task ProtocolErrorOverTls_ConnectionAgeInsideTls_SocketClosesWithoutWaitingForTheClient()
    {
        // listen.UseHttps(...) then listen.UseServerConnectionAge(): the package's transport carries the decrypted
        // HTTP/2 frames, so it sees the error GOAWAY as without TLS. (In the other order, as with endpoint defaults, it
        // sees only TLS records.)
        var probe = new ConnectionEndProbe();
        var kestrelDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var certificate = SelfSignedCertificate();
        await using var host = await GreeterTestHost.StartAsync(
            _ => { },
            useConnectionAge: listen =>
            {
                listen.Use(probe.Middleware);
                listen.UseHttps(certificate);
                listen.UseServerConnectionAge();
                listen.Use(ConnectionEndProbe.SignalsWhenKestrelIsDone(kestrelDone));
            });
        using var client = await RawHttp2Client.ConnectAsync(host.Address, certificate);

        var (frame, errorCode) = ProtocolViolation("ping-on-stream-2");
        await client.Stream.WriteAsync(frame);
        var goAway = await client.ReadUntilAsync(RawHttp2Client.GoAwayFrame);
        Assert.Equal(errorCode, goAway.Payload[7]);
        await Poll.WithTimeout(kestrelDone.Task, "Kestrel to finish the connection after its GOAWAY");
        var kestrelFinished = Stopwatch.GetTimestamp();

        // Measured where the socket is held, at the outermost connection middleware (the client's TLS stream may end
        // before its socket does): the client never closes its side, yet the socket is not held.
        var result = await Poll.WithTimeout(Assert.Single(probe.Connections), "the connection middleware to return");
        var heldFor = Stopwatch.GetElapsedTime(kestrelFinished, result.ReturnedAt);
        Assert.False(result.ClientEndReadBeforeReturn);
        Assert.True(heldFor < ServerConnectionAgeDefaults.MaxGoAwayLinger - TimeSpan.FromSeconds(1), $"the socket was held {heldFor} after Kestrel finished");
    }

    [Theory]
    [InlineData("endpoint defaults, outside TLS", "keep-alive timeout", HttpProtocols.Http2)]
    [InlineData("endpoint defaults, outside TLS", "keep-alive timeout", HttpProtocols.Http1AndHttp2)]
    [InlineData("endpoint defaults, outside TLS", "shutdown", HttpProtocols.Http2)]
    [InlineData("endpoint defaults, outside TLS", "shutdown", HttpProtocols.Http1AndHttp2)]
    [InlineData("before UseHttps, outside TLS", "keep-alive timeout", HttpProtocols.Http1AndHttp2)]
    [InlineData("after UseHttps, inside TLS", "keep-alive timeout", HttpProtocols.Http2)]
    [InlineData("after UseHttps, inside TLS", "keep-alive timeout", HttpProtocols.Http1AndHttp2)]
    public async Task GracefulGoAwayOverTls_EitherOrderOfConnectionAgeAndTls_ClientsTlsStreamStaysOpenUntilTheClientClosesItsSide(
        string placement, string closer, HttpProtocols protocols)
    {
        // Outside TLS (kestrel.UseServerConnectionAge(), endpoint defaults, runs before the endpoint's UseHttps), the
        // held socket carries TLS records, and Kestrel's TLS middleware disposes its SslStream before the hold. The hold
        // still serves the client only if that ends nothing the client reads: no close_notify, no end of stream. It does
        // not (SslStream sends close_notify only from ShutdownAsync, which Kestrel does not call); this shows it where it
        // matters, in what the client's TLS stream returns. Without the hold it ends within milliseconds of the GOAWAY.
        // On an endpoint that also allows HTTP/1.x (Kestrel's default), the hold needs ALPN's answer, which the disposed
        // SslStream no longer gives: before the package noted it while the stream lived, there was no hold there.
        var kestrelDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var certificate = SelfSignedCertificate();
        await using var host = await GreeterTestHost.StartAsync(
            _ => { },
            protocols: protocols,
            kestrelDefaults: kestrel =>
            {
                kestrel.Limits.KeepAliveTimeout = closer == "shutdown" ? TimeSpan.FromMinutes(10) : TimeSpan.FromSeconds(1);
                if (placement.StartsWith("endpoint defaults", StringComparison.Ordinal))
                {
                    kestrel.UseServerConnectionAge();
                }
            },
            useConnectionAge: listen =>
            {
                if (placement.StartsWith("before UseHttps", StringComparison.Ordinal))
                {
                    listen.UseServerConnectionAge();
                }

                listen.UseHttps(certificate);
                if (placement.StartsWith("after UseHttps", StringComparison.Ordinal))
                {
                    listen.UseServerConnectionAge();
                }

                listen.Use(ConnectionEndProbe.SignalsWhenKestrelIsDone(kestrelDone));
            });
        using var client = await RawHttp2Client.ConnectAsync(host.Address, certificate);
        var stopping = closer == "shutdown" ? host.StopAsync() : Task.CompletedTask;

        var goAway = await client.ReadUntilAsync(RawHttp2Client.GoAwayFrame);
        Assert.Equal(new byte[4], goAway.Payload[4..8]); // NO_ERROR
        await Poll.WithTimeout(kestrelDone.Task, "Kestrel to finish the connection after its GOAWAY");

        // A client that picked the connection before it read the GOAWAY sends on it now (a PING stands in for its
        // request): the hold takes it in without a TLS alert or a reset, and the client's TLS stream stays open.
        await client.Stream.WriteAsync(new byte[] { 0, 0, 8, RawHttp2Client.PingFrame, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8 });
        var read = ReadOrEndAsync(client.Stream);
        if (await Task.WhenAny(read, Task.Delay(TimeSpan.FromSeconds(1))) == read)
        {
            Assert.Fail($"the client's TLS stream gave {await read} right after the GOAWAY, before the client closed its side");
        }

        // The client closes its side once it has processed the GOAWAY: the server closes then, well before the bound.
        var clientClosed = Stopwatch.GetTimestamp();
        client.Tcp.Client.Shutdown(System.Net.Sockets.SocketShutdown.Send);
        Assert.Equal("end of stream", await Poll.WithTimeout(read, "the server to close after the client closed its side"));
        var closedAfter = Stopwatch.GetElapsedTime(clientClosed);
        Assert.True(closedAfter < ServerConnectionAgeDefaults.MaxGoAwayLinger - TimeSpan.FromSeconds(1), $"the server closed {closedAfter} after the client");
        await Poll.WithTimeout(stopping, "the host to stop");
    }

    [Fact]
    public async Task KeepAliveTimeout_IdleGrpcConnectionOverTls_ConnectionAgeOutsideTlsOnMixedEndpoint_SocketStaysOpenUntilTheClientClosedItsSide()
    {
        // The order endpoint defaults give (the connection age before UseHttps), on an endpoint with Kestrel's default
        // protocols, with a real .NET gRPC client: it reads the GOAWAY through its TLS stream while the socket is held,
        // closes its side, and moves on to a new connection.
        var probe = new ConnectionEndProbe();
        var kestrelDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var certificate = SelfSignedCertificate();
        await using var host = await StartMixedTlsHostAsync(probe, kestrelDone, certificate);
        using var gated = new GatedGrpcClient(host.Address, certificate);
        var client = gated.Client;

        // The client reads nothing until Kestrel has sent its GOAWAY and finished with the connection, and its end
        // reaches the server only once the connection age has decided on the hold. Here the client needs that most:
        // Kestrel's TLS middleware still disposes its SslStream after Kestrel is done, and a client reading at once
        // often closed before the decision (about 2 runs in 100), which then rightly held nothing.
        var (connection, clientStream) = await gated.CallThenHoldAsync(probe);
        var released = await clientStream.ReleaseOnceKestrelIsDoneAsync(kestrelDone.Task, host);

        var result = await Poll.WithTimeout(connection, "the connection middleware to return");
        Assert.True(result.ClientEndReadBeforeReturn, "the server should keep the socket open until the client closed its side");
        var lingered = Stopwatch.GetElapsedTime(released, result.ReturnedAt);
        Assert.True(lingered < ServerConnectionAgeDefaults.MaxGoAwayLinger, $"the linger lasted {lingered} after the client could read");
        await client.SayHelloAsync(new HelloRequest { Name = "b" });
        Assert.Equal(2, host.ConnectionsAccepted);
    }

    [Fact]
    public async Task KeepAliveTimeout_GrpcClientClosesBeforeTheHoldDecision_ConnectionEndsAtOnceAndTheClientMovesOn()
    {
        // The interleaving that made the test above flaky before the client's close was held: Kestrel is done, the
        // client reads the GOAWAY and closes its side, and only then does the connection age decide (here a step between
        // it and UseHttps waits for the client's end to arrive; under load, Kestrel's TLS middleware disposing its
        // SslStream is that slow on its own). The client is gone, so there is nothing to hold for: the connection ends at
        // once, without the linger's bound, as a clean close, and the client moves on to a new connection.
        var probe = new ConnectionEndProbe();
        var kestrelDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var certificate = SelfSignedCertificate();
        await using var host = await StartMixedTlsHostAsync(probe, kestrelDone, certificate, beforeTls: next => async connection =>
        {
            await next(connection);
            var clientEnded = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var registration = connection.ConnectionClosed.Register(() => clientEnded.TrySetResult());
            await Poll.WithTimeout(clientEnded.Task, "the client's end to arrive");
        });
        using var gated = new GatedGrpcClient(host.Address, certificate);
        var client = gated.Client;
        await client.SayHelloAsync(new HelloRequest { Name = "a" });
        var connection = Assert.Single(probe.Connections);
        var clientStream = gated.SingleStream;

        clientStream.HoldReads();
        await Poll.WithTimeout(kestrelDone.Task, "Kestrel's keep-alive timeout to finish the idle connection");
        var released = Stopwatch.GetTimestamp();
        clientStream.ReleaseReads();

        var result = await Poll.WithTimeout(connection, "the connection middleware to return");
        Assert.True(clientStream.CloseRequested);
        var endedAfter = Stopwatch.GetElapsedTime(released, result.ReturnedAt);
        Assert.True(endedAfter < ServerConnectionAgeDefaults.MaxGoAwayLinger - TimeSpan.FromSeconds(1), $"the connection ended {endedAfter} after the client could read");
        await Poll.UntilAsync(() => host.EndedCount == 1, "the connection's age to be recorded at its end");
        Assert.Equal(0, host.AbortCount);
        await client.SayHelloAsync(new HelloRequest { Name = "b" });
        Assert.Equal(2, host.ConnectionsAccepted);
    }

    /// <summary>
    /// A TLS endpoint with Kestrel's default protocols and the connection age before <c>UseHttps</c> (the order endpoint
    /// defaults give), the probe outside both; <paramref name="beforeTls"/> runs between the connection age and TLS.
    /// </summary>
    private static Task<GreeterTestHost> StartMixedTlsHostAsync(
        ConnectionEndProbe probe, TaskCompletionSource kestrelDone, X509Certificate2 certificate, Func<ConnectionDelegate, ConnectionDelegate>? beforeTls = null) =>
        GreeterTestHost.StartAsync(
            _ => { },
            protocols: HttpProtocols.Http1AndHttp2,
            kestrelDefaults: kestrel => kestrel.Limits.KeepAliveTimeout = KeepAliveTimeout,
            useConnectionAge: listen =>
            {
                listen.Use(probe.Middleware);
                listen.UseServerConnectionAge();
                if (beforeTls is not null)
                {
                    listen.Use(beforeTls);
                }

                listen.UseHttps(certificate);
                listen.Use(ConnectionEndProbe.SignalsWhenKestrelIsDone(kestrelDone));
            });

    [Fact]
    public async Task KeepAliveTimeout_Http11OverTlsOnMixedEndpoint_ConnectionAgeOutsideTls_SocketClosesWithoutTheHold()
    {
        // ALPN chose HTTP/1.1 on an endpoint that allows both: no GOAWAY for the client to read, and a held socket would
        // be reused by the client for a request never answered; so Kestrel's keep-alive close reaches it at once.
        using var certificate = SelfSignedCertificate();
        await using var host = await GreeterTestHost.StartAsync(
            _ => { },
            protocols: HttpProtocols.Http1AndHttp2,
            kestrelDefaults: kestrel =>
            {
                kestrel.Limits.KeepAliveTimeout = TimeSpan.FromSeconds(1);
                kestrel.UseServerConnectionAge();
            },
            useConnectionAge: listen => listen.UseHttps(certificate));
        using var tcp = new System.Net.Sockets.TcpClient();
        await tcp.ConnectAsync(host.Address.Host, host.Address.Port);
        await using var tls = new System.Net.Security.SslStream(tcp.GetStream());
        await tls.AuthenticateAsClientAsync(new System.Net.Security.SslClientAuthenticationOptions
        {
            TargetHost = "localhost",
            ApplicationProtocols = [System.Net.Security.SslApplicationProtocol.Http11],
            RemoteCertificateValidationCallback = (_, presented, _, _) => presented?.GetCertHashString() == certificate.GetCertHashString(),
        });
        Assert.Equal(System.Net.Security.SslApplicationProtocol.Http11, tls.NegotiatedApplicationProtocol);
        await tls.WriteAsync("GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n"u8.ToArray());

        // The response, then Kestrel's keep-alive close (1 s later), without the 5 s hold.
        var answered = Stopwatch.GetTimestamp();
        var response = new MemoryStream();
        var buffer = new byte[1024];
        using var timeout = new CancellationTokenSource(Poll.DefaultTimeout);
        try
        {
            int read;
            while ((read = await tls.ReadAsync(buffer, timeout.Token)) > 0)
            {
                response.Write(buffer, 0, read);
            }
        }
        catch (IOException)
        {
            // A reset ends the stream too.
        }

        var closedAfter = Stopwatch.GetElapsedTime(answered);
        Assert.Contains("pong", System.Text.Encoding.ASCII.GetString(response.ToArray()));
        Assert.True(closedAfter < ServerConnectionAgeDefaults.MaxGoAwayLinger, $"the connection closed {closedAfter} after the request");
    }

    // What the client's TLS stream gives next: bytes (unexpected here), or its end (0 bytes, or a reset).
    private static async Task<string> ReadOrEndAsync(Stream stream)
    {
        try
        {
            var read = await stream.ReadAsync(new byte[1024]);
            return read == 0 ? "end of stream" : $"{read} bytes";
        }
        catch (IOException)
        {
            return "end of stream";
        }
    }

    [Theory]
    [InlineData(HttpProtocols.Http2)]
    [InlineData(HttpProtocols.Http1AndHttp2)]
    public async Task Shutdown_ConnectionAgeOutsideTls_ConnectionEndsCleanlyWithItsAgeRecorded(HttpProtocols protocols)
    {
        // listen.UseServerConnectionAge() then listen.UseHttps(...), the order endpoint defaults give: when the package
        // decides on the linger, Kestrel's TLS middleware has returned and disposed its SslStream, and with it the answer
        // of ALPN. Before, reading it threw there: no close through the package, no age recorded, an error for Kestrel.
        using var certificate = SelfSignedCertificate();
        await using var host = await GreeterTestHost.StartAsync(_ => { }, protocols: protocols, useConnectionAge: listen =>
        {
            listen.UseServerConnectionAge();
            listen.UseHttps(certificate);
        });
        using var handler = new SocketsHttpHandler();
        handler.SslOptions.RemoteCertificateValidationCallback = (_, presented, _, _) => presented?.GetCertHashString() == certificate.GetCertHashString();
        using var channel = GrpcChannel.ForAddress(host.Address, new GrpcChannelOptions { HttpHandler = handler });
        await new Greeter.GreeterClient(channel).SayHelloAsync(new HelloRequest { Name = "tls" });

        await Poll.WithTimeout(host.StopAsync(), "the host to stop");

        await Poll.UntilAsync(() => host.EndedCount == 1, "the connection's age to be recorded at its end");
    }

    private static X509Certificate2 SelfSignedCertificate()
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        using var ephemeral = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        return X509CertificateLoader.LoadPkcs12(ephemeral.Export(X509ContentType.Pfx), null);
    }

    // A frame that Kestrel answers with a connection error, and the error code of its GOAWAY.
    private static (byte[] Frame, byte ErrorCode) ProtocolViolation(string violation) => violation switch
    {
        "ping-on-stream-2" => ([0, 0, 8, RawHttp2Client.PingFrame, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0], 0x1),
        "data-on-idle-stream" => ([0, 0, 1, 0x0, 0, 0, 0, 0, 1, 42], 0x1),

        // Only the header: Kestrel rejects the length before the payload arrives.
        "oversized-frame" => ([0x00, 0x40, 0x01, 0x0, 0, 0, 0, 0, 1], 0x6),
        _ => throw new ArgumentOutOfRangeException(nameof(violation), violation, null),
    };
}
