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
    /// (it sets the TLS features on the connection), that is, once the inner middleware returned.
    /// </summary>
    public static bool IsHttp2(IFeatureCollection connectionFeatures, HttpProtocols endpointProtocols)
    {
        if (connectionFeatures.Get<ITlsConnectionFeature>() is not null)
        {
            var alpn = connectionFeatures.Get<ITlsApplicationProtocolFeature>()?.ApplicationProtocol ?? default;
            return alpn.Span.SequenceEqual("h2"u8);
        }

        return (endpointProtocols & HttpProtocols.Http2) != 0 && (endpointProtocols & HttpProtocols.Http1) == 0;
    }
}
