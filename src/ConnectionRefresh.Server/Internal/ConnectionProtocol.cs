using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Core.Features;

namespace ConnectionRefresh.Server.Internal;

/// <summary>Which HTTP version Kestrel speaks on a connection, as seen by a connection middleware. Stateless.</summary>
internal static class ConnectionProtocol
{
    /// <summary>
    /// Whether Kestrel serves the connection with HTTP/2, by Kestrel's own rule: over TLS, when ALPN chose <c>h2</c>;
    /// without TLS, only on an endpoint that does not allow HTTP/1.x (Kestrel has no h2c upgrade or prior-knowledge
    /// detection, so a cleartext endpoint that allows HTTP/1.x speaks HTTP/1.1). Read after the TLS middleware ran
    /// (it sets the TLS features on the connection), that is, once the inner middleware returned. When that TLS
    /// middleware ran inside the caller, ALPN's answer is gone by then, and only the endpoint's protocols tell (the
    /// caller notes ALPN's answer earlier instead: <see cref="LingeringTransport.NegotiatedHttp2"/>).
    /// </summary>
    public static bool IsHttp2(IFeatureCollection connectionFeatures, HttpProtocols endpointProtocols)
    {
        if (connectionFeatures.Get<ITlsConnectionFeature>() is not null)
        {
            try
            {
                var alpn = connectionFeatures.Get<ITlsApplicationProtocolFeature>()?.ApplicationProtocol ?? default;
                return alpn.Span.SequenceEqual("h2"u8);
            }
            catch (ObjectDisposedException)
            {
                // Kestrel's TLS middleware ran inside the caller (the order endpoint defaults give) and has disposed
                // its SslStream, which answers for ALPN: only an endpoint without HTTP/1.x is sure to be HTTP/2.
            }
        }

        return (endpointProtocols & HttpProtocols.Http2) != 0 && (endpointProtocols & HttpProtocols.Http1) == 0;
    }
}
