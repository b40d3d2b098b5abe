using System.Net.Sockets;
using System.Text;
using ConnectionRefresh.Server.Tests.TestSupport;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Time.Testing;

namespace ConnectionRefresh.Server.Tests.Integration;

/// <summary>
/// HTTP/1.1 connections on an endpoint with the connection age (gRPC-Web, health checks or REST next to gRPC): real
/// Kestrel on loopback, the connection age on a FakeTimeProvider. HTTP/1.1 has no GOAWAY, so there is nothing for the
/// client to read before the server's close: the socket must close at once rather than linger.
/// </summary>
public sealed class Http1ConnectionTests
{
    private static readonly TimeSpan Age = TimeSpan.FromMinutes(1);

    private static FakeTimeProvider NewClock() => new(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero));

    private static void Configure(ServerConnectionAgeOptions o)
    {
        o.MaxConnectionAge = Age;
        o.MaxConnectionAgeJitter = 0;
    }

    [Fact]
    public async Task MaxConnectionAge_IdleHttp11Connection_ServerClosesTheSocketWithoutLinger()
    {
        var clock = NewClock();
        await using var host = await GreeterTestHost.StartAsync(Configure, clock, protocols: HttpProtocols.Http1AndHttp2);
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(host.Address.Host, host.Address.Port);
        var stream = tcp.GetStream();

        await stream.WriteAsync(Encoding.ASCII.GetBytes("GET /ping HTTP/1.1\r\nHost: test\r\n\r\n"));
        var response = new StringBuilder();
        var buffer = new byte[4096];
        await Poll.UntilAsync(
            async () =>
            {
                var read = await stream.ReadAsync(buffer);
                Assert.True(read > 0, $"the server closed the connection before answering: {response}");
                response.Append(Encoding.ASCII.GetString(buffer, 0, read));
                // Chunked: "4\r\npong\r\n" and the last chunk "0\r\n\r\n".
                return response.ToString().EndsWith("0\r\n\r\n", StringComparison.Ordinal);
            },
            "the response to the first request");
        Assert.StartsWith("HTTP/1.1 200", response.ToString(), StringComparison.Ordinal);
        Assert.Contains("pong", response.ToString(), StringComparison.Ordinal);

        // The age passes while the keep-alive connection is idle: Kestrel ends it at once, and the client must see
        // the end of the stream now. Lingering (held open until the client closes, as after an HTTP/2 GOAWAY) would
        // leave a client that sends its next request on this connection waiting for an answer that never comes,
        // until the socket is reset seconds later.
        clock.Advance(Age);
        var end = await Poll.WithTimeout(stream.ReadAsync(buffer).AsTask(), "the server to close the idle HTTP/1.1 connection");

        Assert.Equal(0, end);
        Assert.Equal(1, host.CloseCount);
    }

    [Fact]
    public async Task Http11RequestOnHttp2OnlyEndpoint_KestrelRejectsIt_SocketClosesWithoutLinger()
    {
        // Kestrel answers an HTTP/1.x request on an HTTP/2-only endpoint with "400, Connection: close" and finishes, with
        // no GOAWAY: a client that does not speak HTTP/2 has nothing to read before the close. Held open, a client that
        // reads to the end of the stream (an HTTP/1.0-style health check) waits for the hold's bound. The connection age's
        // clock is frozen here, so a hold would never end.
        await using var host = await GreeterTestHost.StartAsync(Configure, NewClock());
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(host.Address.Host, host.Address.Port);
        var stream = tcp.GetStream();

        await stream.WriteAsync(Encoding.ASCII.GetBytes("GET /ping HTTP/1.1\r\nHost: test\r\n\r\n"));
        var response = await Poll.WithTimeout(ReadToEndAsync(stream), "the server to close after its 400");

        Assert.StartsWith("HTTP/1.1 400", response, StringComparison.Ordinal);
    }

    private static async Task<string> ReadToEndAsync(Stream stream)
    {
        var response = new StringBuilder();
        var buffer = new byte[4096];
        int read;
        while ((read = await stream.ReadAsync(buffer)) > 0)
        {
            response.Append(Encoding.ASCII.GetString(buffer, 0, read));
        }

        return response.ToString();
    }
}
