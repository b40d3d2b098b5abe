using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;

namespace ConnectionRefresh.Server.Tests.TestSupport;

/// <summary>
/// A bare HTTP/2 client over a <see cref="TcpClient"/>, for tests that need exact control of what the client sends and
/// when it closes: it never closes, pings or answers by itself. Not thread-safe: one test drives it.
/// </summary>
internal sealed class RawHttp2Client : IDisposable
{
    public const byte SettingsFrame = 0x4;
    public const byte PingFrame = 0x6;
    public const byte GoAwayFrame = 0x7;

    // The HTTP/2 client preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
    private static readonly byte[] ClientPreface =
        [.. "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8, 0, 0, 0, SettingsFrame, 0, 0, 0, 0, 0];

    private RawHttp2Client(TcpClient tcp, Stream stream)
    {
        Tcp = tcp;
        Stream = stream;
    }

    public TcpClient Tcp { get; }

    /// <summary>
    /// The connection's stream (taken once: TcpClient refuses it after a half-close): the socket's, or TLS over it.
    /// </summary>
    public Stream Stream { get; }

    /// <summary>A frame the server sent: its type, flags and payload.</summary>
    internal sealed record Frame(byte Type, byte Flags, byte[] Payload);

    /// <summary>
    /// Opens a connection and sends the preface, once Kestrel serves it (its SETTINGS came). With
    /// <paramref name="serverCertificate"/>, over TLS with ALPN <c>h2</c>, trusting that certificate only.
    /// </summary>
    public static async Task<RawHttp2Client> ConnectAsync(Uri address, X509Certificate2? serverCertificate = null)
    {
        var tcp = new TcpClient();
        await tcp.ConnectAsync(address.Host, address.Port);
        Stream stream = tcp.GetStream();
        if (serverCertificate is not null)
        {
            var ssl = new SslStream(stream);
            await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
            {
                TargetHost = "localhost",
                ApplicationProtocols = [SslApplicationProtocol.Http2],
                RemoteCertificateValidationCallback = (_, certificate, _, _) =>
                    certificate is not null && certificate.GetCertHashString() == serverCertificate.GetCertHashString(),
            });
            stream = ssl;
        }

        var client = new RawHttp2Client(tcp, stream);
        await client.Stream.WriteAsync(ClientPreface);
        var settings = await client.ReadFrameAsync() ?? throw new InvalidOperationException("the server closed before its SETTINGS");
        Assert.Equal(SettingsFrame, settings.Type);
        return client;
    }

    /// <summary>The next frame, or <see langword="null"/> at the end of the connection (FIN or reset).</summary>
    public async Task<Frame?> ReadFrameAsync(TimeSpan? timeout = null)
    {
        using var cancel = new CancellationTokenSource(timeout ?? Poll.DefaultTimeout);
        var header = new byte[9];
        try
        {
            await Stream.ReadExactlyAsync(header, cancel.Token);
            var payload = new byte[(header[0] << 16) | (header[1] << 8) | header[2]];
            await Stream.ReadExactlyAsync(payload, cancel.Token);
            return new Frame(header[3], header[4], payload);
        }
        catch (Exception ex) when (ex is EndOfStreamException or IOException)
        {
            return null;
        }
    }

    /// <summary>Reads frames until one of <paramref name="type"/>; fails if the connection ends first.</summary>
    public async Task<Frame> ReadUntilAsync(byte type)
    {
        while (true)
        {
            var frame = await ReadFrameAsync() ?? throw new InvalidOperationException($"the connection ended before a frame of type {type}");
            if (frame.Type == type)
            {
                return frame;
            }
        }
    }

    /// <summary>The types of the frames the server sends until the connection ends (FIN or reset).</summary>
    public async Task<List<byte>> ReadFrameTypesToEndAsync()
    {
        var types = new List<byte>();
        while (await ReadFrameAsync() is { } frame)
        {
            types.Add(frame.Type);
        }

        return types;
    }

    public void Dispose() => Tcp.Dispose();
}
