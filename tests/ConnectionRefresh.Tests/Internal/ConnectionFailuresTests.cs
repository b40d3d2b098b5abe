using System.Net.Sockets;
using ConnectionRefresh.Internal;

namespace ConnectionRefresh.Tests.Internal;

public sealed class ConnectionFailuresTests
{
    public static TheoryData<Exception, bool> Failures() => new()
    {
        { new HttpRequestException("refused", new SocketException((int)SocketError.ConnectionRefused)), true },
        { new HttpProtocolException(1, "The HTTP/2 server didn't respond to a ping request within the configured KeepAlivePingDelay.", null), true },
        { new IOException("wrapped", new HttpIOException(HttpRequestError.ResponseEnded, "The response ended prematurely.")), true },
        { new HttpRequestException(HttpRequestError.ConnectionError, "The connection was closed."), true },
        { new HttpProtocolException(8, "The HTTP/2 server reset the stream. HTTP/2 error code 'CANCEL' (0x8).", null), false },
        { new HttpRequestException("name resolution", null), false },
        { Http11Required("The HTTP/2 server closed the connection. HTTP/2 error code 'HTTP_1_1_REQUIRED' (0xd)."), false },
        { new InvalidOperationException("bug"), false },
    };

    /// <summary>What SocketsHttpHandler throws (seen on .NET 10) once its retries of a GOAWAY HTTP_1_1_REQUIRED are spent.</summary>
    private static HttpRequestException Http11Required(string message)
        => new("The request was aborted.", new HttpProtocolException(0xd, message, null));

    [Theory]
    [MemberData(nameof(Failures))]
    public void IsConnectionLoss_ClassifiesFailures(Exception failure, bool expected)
        => Assert.Equal(expected, ConnectionFailures.IsConnectionLoss(failure, out _));

    [Fact]
    public void IsConnectionLoss_ProtocolError_ReturnsItForReplacement()
    {
        var protocol = new HttpProtocolException(1, "ping timeout", null);

        Assert.True(ConnectionFailures.IsConnectionLoss(new HttpRequestException("x", protocol), out var found));
        Assert.Same(protocol, found);
    }

    [Theory]
    [InlineData("The HTTP/2 server closed the connection. HTTP/2 error code 'HTTP_1_1_REQUIRED' (0xd).")]
    [InlineData("The HTTP/2 server reset the stream. HTTP/2 error code 'HTTP_1_1_REQUIRED' (0xd).")]
    public void IsHttp11Required_GoAwayOrStreamReset_True(string message)
        => Assert.True(ConnectionFailures.IsHttp11Required(new IOException("wrapped", Http11Required(message))));

    [Fact]
    public void IsHttp11Required_OtherProtocolErrors_False()
    {
        Assert.False(ConnectionFailures.IsHttp11Required(new HttpRequestException("x", new HttpProtocolException(0xb, "ENHANCE_YOUR_CALM", null))));
        Assert.False(ConnectionFailures.IsHttp11Required(new HttpRequestException(HttpRequestError.ConnectionError, "closed")));
    }
}
