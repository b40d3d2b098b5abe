using System.Security.Cryptography.X509Certificates;
using System.Text;
using ConnectionRefresh.Server.Internal;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Core.Features;

namespace ConnectionRefresh.Server.Tests.Internal;

public sealed class ConnectionProtocolTests
{
    [Theory]
    [InlineData(HttpProtocols.Http2, true)]
    [InlineData(HttpProtocols.Http1AndHttp2, false)]
    [InlineData(HttpProtocols.Http1AndHttp2AndHttp3, false)]
    [InlineData(HttpProtocols.Http1, false)]
    public void IsHttp2_WithoutTls_HttpTwoOnlyWhenTheEndpointAllowsNoHttpOne(HttpProtocols endpoint, bool expected)
    {
        Assert.Equal(expected, ConnectionProtocol.IsHttp2(new FeatureCollection(), endpoint));
    }

    [Theory]
    [InlineData("h2", true)]
    [InlineData("http/1.1", false)]
    [InlineData("", false)]
    public void IsHttp2_WithTls_FollowsAlpn(string alpn, bool expected)
    {
        var features = new FeatureCollection();
        var tls = new FakeTls(Encoding.ASCII.GetBytes(alpn));
        features.Set<ITlsConnectionFeature>(tls);
        features.Set<ITlsApplicationProtocolFeature>(tls);

        // The endpoint's protocols do not matter once TLS is there: ALPN decides.
        Assert.Equal(expected, ConnectionProtocol.IsHttp2(features, HttpProtocols.Http1AndHttp2));
        Assert.Equal(expected, ConnectionProtocol.IsHttp2(features, HttpProtocols.Http2));
    }

    [Theory]
    [InlineData(HttpProtocols.Http2, true)]
    [InlineData(HttpProtocols.Http1AndHttp2, false)]
    public void IsHttp2_TlsStreamAlreadyDisposed_FallsBackToTheEndpointsProtocols(HttpProtocols endpoint, bool expected)
    {
        // Kestrel's TLS feature reads ALPN from its SslStream, which throws once Kestrel's TLS middleware disposed it.
        var features = new FeatureCollection();
        var tls = new FakeTls(null);
        features.Set<ITlsConnectionFeature>(tls);
        features.Set<ITlsApplicationProtocolFeature>(tls);

        Assert.Equal(expected, ConnectionProtocol.IsHttp2(features, endpoint));
    }

    // A null ALPN stands for a disposed SslStream.
    private sealed class FakeTls(byte[]? alpn) : ITlsConnectionFeature, ITlsApplicationProtocolFeature
    {
        public X509Certificate2? ClientCertificate { get; set; }

        public ReadOnlyMemory<byte> ApplicationProtocol => alpn ?? throw new ObjectDisposedException("SslStream");

        public Task<X509Certificate2?> GetClientCertificateAsync(CancellationToken cancellationToken) => Task.FromResult(ClientCertificate);
    }
}
