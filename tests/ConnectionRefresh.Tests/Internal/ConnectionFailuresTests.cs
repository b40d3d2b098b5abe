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
        { new InvalidOperationException("bug"), false },
    };

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
}
