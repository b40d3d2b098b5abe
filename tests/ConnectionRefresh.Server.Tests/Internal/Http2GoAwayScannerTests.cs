using System.IO.Pipelines;
using ConnectionRefresh.Server.Internal;

namespace ConnectionRefresh.Server.Tests.Internal;

public sealed class Http2GoAwayScannerTests
{
    private static readonly byte[] Settings = [0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];

    private static byte[] GoAway(int errorCode, int lastStreamId = 0) =>
        [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, (byte)lastStreamId, (byte)(errorCode >> 24), (byte)(errorCode >> 16), (byte)(errorCode >> 8), (byte)errorCode];

    private static byte[] Data(int length, byte fill = 0x7) => [(byte)(length >> 16), (byte)(length >> 8), (byte)length, 0x0, 0, 0, 0, 0, 1, .. Enumerable.Repeat(fill, length)];

    private static bool Scan(int chunk, params byte[][] frames)
    {
        var bytes = frames.SelectMany(f => f).ToArray();
        var scanner = default(Http2GoAwayScanner);
        for (var offset = 0; offset < bytes.Length; offset += chunk)
        {
            scanner.Scan(bytes.AsSpan(offset, Math.Min(chunk, bytes.Length - offset)));
        }

        return scanner.SawErrorGoAway;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(4)]
    [InlineData(9)]
    [InlineData(13)]
    [InlineData(100_000)]
    public void Scan_ErrorGoAwayAfterOtherFrames_IsSeenHoweverTheWritesSplitThem(int chunk)
    {
        Assert.True(Scan(chunk, Settings, Data(40_000), GoAway(0x1, lastStreamId: 1)));
        Assert.True(Scan(chunk, Settings, GoAway(0x0b)));
        Assert.True(Scan(chunk, GoAway(0x1_0000))); // an unknown code is an error too: only 0 is NO_ERROR
    }

    [Theory]
    [InlineData(1)]
    [InlineData(5)]
    [InlineData(100_000)]
    public void Scan_OnlyGracefulFrames_SeesNoError(int chunk)
    {
        Assert.False(Scan(chunk, Settings, GoAway(0x0, lastStreamId: int.MaxValue & 0x7f), Data(3), GoAway(0x0, lastStreamId: 1)));
    }

    [Fact]
    public void Scan_ErrorGoAwayBytesInsideADataPayload_AreNotAGoAway()
    {
        Assert.False(Scan(1000, Settings, [0, 0, 17, 0x0, 0, 0, 0, 0, 1, .. GoAway(0x1)], GoAway(0x0)));
    }

    [Fact]
    public void Scan_GoAwayShorterThanItsFixedFields_DoesNotReadTheNextFrameAsItsErrorCode()
    {
        // A 4-byte GOAWAY payload has no error code; the SETTINGS frame after it is not part of it.
        Assert.False(Scan(1000, [0, 0, 4, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task LingeringTransport_ErrorGoAway_IsSeenOnlyWhenTheClientSpokeHttp2InClear(bool clear)
    {
        // Under TLS (this middleware outside Kestrel's TLS middleware) the client's first bytes are a TLS record: the
        // frames are encrypted, and nothing is scanned.
        var fromClient = new Pipe();
        var toClient = new Pipe();
        var transport = new LingeringTransport(new DuplexPipe(fromClient.Reader, toClient.Writer));
        byte[] first = clear ? [.. "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8] : [0x16, 0x03, 0x01, 0x02, 0x00];
        await fromClient.Writer.WriteAsync(first);
        var read = await transport.Input.ReadAsync();
        transport.Input.AdvanceTo(read.Buffer.End);

        await transport.Output.WriteAsync(Settings);
        await transport.Output.WriteAsync(GoAway(0x1));

        Assert.True(transport.ClientSentData);
        Assert.Equal(clear, transport.SentErrorGoAway);
    }

    private sealed record DuplexPipe(PipeReader Input, PipeWriter Output) : IDuplexPipe;
}
