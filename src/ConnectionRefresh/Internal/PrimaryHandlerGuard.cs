namespace ConnectionRefresh.Internal;

/// <summary>
/// ConnectionRefresh replaces the client's primary handler. These checks make sure that nothing the application
/// configured on the primary handler is lost in silence, and that nothing replaces ours afterwards. They run where
/// HttpClientFactory builds the client's handler chain: at host start-up (<see cref="HandlerChainStartupValidator"/>), or
/// at the client's first creation where nothing validates on start.
/// </summary>
internal static class PrimaryHandlerGuard
{
    private const string Advice =
        "Configure TLS, proxy and other SocketsHttpHandler settings with ConfigureConnectionRefreshHandler((handler, services) => ...) " +
        "on the same IHttpClientBuilder: ConnectionRefresh applies it to every connection it opens.";

    /// <summary>Throws when the handler about to be replaced carries application settings.</summary>
    public static void ThrowIfConfigured(HttpMessageHandler? previous, string clientName)
    {
        var setting = previous switch
        {
            null => null,
            SocketsHttpHandler sockets => ConfiguredSetting(sockets),
            HttpClientHandler client => ConfiguredSetting(client),
            _ => $"a primary handler of type {previous.GetType().FullName}",
        };

        if (setting is not null)
        {
            throw new PrimaryHandlerException(
                $"HTTP client '{clientName}' configures {setting} on its primary handler, which AddConnectionRefresh replaces. {Advice}");
        }
    }

    /// <summary>Throws when the application replaced the primary handler after AddConnectionRefresh.</summary>
    public static void ThrowIfReplaced(HttpMessageHandler? before, HttpMessageHandler? primary, string clientName)
    {
        if (!ReferenceEquals(before, primary))
        {
            throw new PrimaryHandlerException(
                $"HTTP client '{clientName}' replaced its primary handler (with {primary?.GetType().FullName ?? "null"}) after AddConnectionRefresh, " +
                $"which owns it. {Advice}");
        }
    }

    // What a handler looks like before anyone configures it; compared with, never used to send.
    private static readonly SocketsHttpHandler DefaultSockets = new();
    private static readonly HttpClientHandler DefaultClient = new();

    // Every setting that would be lost, in the order they are reported. EnableMultipleHttp2Connections and
    // PooledConnectionLifetime are left out: Grpc.Net.ClientFactory sets them itself on its default handler.
    private static string? ConfiguredSetting(SocketsHttpHandler handler)
    {
        var ssl = handler.SslOptions;
        var defaults = DefaultSockets.SslOptions;
        return ssl.ClientCertificates is { Count: > 0 } || ssl.ClientCertificateContext is not null || ssl.LocalCertificateSelectionCallback is not null
                ? "client certificates"
            : ssl.RemoteCertificateValidationCallback is not null ? "SslOptions.RemoteCertificateValidationCallback"
            : ssl.EnabledSslProtocols != defaults.EnabledSslProtocols ? "SslOptions.EnabledSslProtocols"
            : ssl.CertificateRevocationCheckMode != defaults.CertificateRevocationCheckMode ? "SslOptions.CertificateRevocationCheckMode"
            : ssl.TargetHost is not null ? "SslOptions.TargetHost"
            : ssl.CipherSuitesPolicy is not null ? "SslOptions.CipherSuitesPolicy"
            : ssl.CertificateChainPolicy is not null ? "SslOptions.CertificateChainPolicy"
            : ssl.AllowRenegotiation != defaults.AllowRenegotiation ? "SslOptions.AllowRenegotiation"
            : ssl.AllowTlsResume != defaults.AllowTlsResume ? "SslOptions.AllowTlsResume"
            : handler.Proxy is not null ? "a proxy"
            : handler.UseProxy != DefaultSockets.UseProxy ? "UseProxy"
            : handler.DefaultProxyCredentials is not null ? "DefaultProxyCredentials"
            : handler.Credentials is not null ? "credentials"
            : handler.PreAuthenticate ? "PreAuthenticate"
            : handler.ConnectCallback is not null ? "a ConnectCallback"
            : handler.PlaintextStreamFilter is not null ? "a PlaintextStreamFilter"
            : handler.UseCookies != DefaultSockets.UseCookies || handler.CookieContainer.Count > 0 ? "cookies"
            : handler.AllowAutoRedirect != DefaultSockets.AllowAutoRedirect || handler.MaxAutomaticRedirections != DefaultSockets.MaxAutomaticRedirections
                ? "redirects"
            : handler.AutomaticDecompression != DefaultSockets.AutomaticDecompression ? "AutomaticDecompression"
            : handler.MaxConnectionsPerServer != DefaultSockets.MaxConnectionsPerServer ? "MaxConnectionsPerServer"
            : handler.MaxResponseHeadersLength != DefaultSockets.MaxResponseHeadersLength ? "MaxResponseHeadersLength"
            : handler.InitialHttp2StreamWindowSize != DefaultSockets.InitialHttp2StreamWindowSize ? "InitialHttp2StreamWindowSize"
            : handler.EnableMultipleHttp3Connections != DefaultSockets.EnableMultipleHttp3Connections ? "EnableMultipleHttp3Connections"
            : handler.Expect100ContinueTimeout != DefaultSockets.Expect100ContinueTimeout ? "Expect100ContinueTimeout"
            : handler.ResponseDrainTimeout != DefaultSockets.ResponseDrainTimeout ? "ResponseDrainTimeout"
            : handler.MaxResponseDrainSize != DefaultSockets.MaxResponseDrainSize ? "MaxResponseDrainSize"
            : handler.ConnectTimeout != DefaultSockets.ConnectTimeout ? "ConnectTimeout (ConnectionRefresh has its own option)"
            : handler.PooledConnectionIdleTimeout != DefaultSockets.PooledConnectionIdleTimeout ? "PooledConnectionIdleTimeout (ConnectionRefresh has its own option)"
            : handler.KeepAlivePingDelay != DefaultSockets.KeepAlivePingDelay || handler.KeepAlivePingTimeout != DefaultSockets.KeepAlivePingTimeout
                || handler.KeepAlivePingPolicy != DefaultSockets.KeepAlivePingPolicy ? "keepalive pings (ConnectionRefresh has its own options)"
            : handler.RequestHeaderEncodingSelector is not null || handler.ResponseHeaderEncodingSelector is not null ? "header encoding selectors"
            : handler.ActivityHeadersPropagator != DefaultSockets.ActivityHeadersPropagator ? "ActivityHeadersPropagator"
            : null;
    }

    private static string? ConfiguredSetting(HttpClientHandler handler)
        => handler.ClientCertificateOptions == ClientCertificateOption.Manual && handler.ClientCertificates.Count > 0 ? "client certificates"
            : handler.ServerCertificateCustomValidationCallback is not null ? "ServerCertificateCustomValidationCallback"
            : handler.SslProtocols != DefaultClient.SslProtocols ? "SslProtocols"
            : handler.CheckCertificateRevocationList != DefaultClient.CheckCertificateRevocationList ? "CheckCertificateRevocationList"
            : handler.Proxy is not null ? "a proxy"
            : handler.UseProxy != DefaultClient.UseProxy ? "UseProxy"
            : handler.DefaultProxyCredentials is not null ? "DefaultProxyCredentials"
            : handler.Credentials is not null || handler.UseDefaultCredentials ? "credentials"
            : handler.PreAuthenticate ? "PreAuthenticate"
            : handler.UseCookies != DefaultClient.UseCookies || handler.CookieContainer.Count > 0 ? "cookies"
            : handler.AllowAutoRedirect != DefaultClient.AllowAutoRedirect || handler.MaxAutomaticRedirections != DefaultClient.MaxAutomaticRedirections
                ? "redirects"
            : handler.AutomaticDecompression != DefaultClient.AutomaticDecompression ? "AutomaticDecompression"
            : handler.MaxConnectionsPerServer != DefaultClient.MaxConnectionsPerServer ? "MaxConnectionsPerServer"
            : handler.MaxResponseHeadersLength != DefaultClient.MaxResponseHeadersLength ? "MaxResponseHeadersLength"
            : null;
}

/// <summary>
/// A mistake in the configuration of a client's primary handler, found by <see cref="PrimaryHandlerGuard"/>: an
/// <see cref="InvalidOperationException"/> to the application, told apart from other failures of the handler chain so that
/// start-up validation can report it with the other configuration errors.
/// </summary>
internal sealed class PrimaryHandlerException : InvalidOperationException
{
    public PrimaryHandlerException()
        : this("The client's primary handler is configured in a way AddConnectionRefresh cannot keep.")
    {
    }

    public PrimaryHandlerException(string message)
        : base(message)
    {
    }

    public PrimaryHandlerException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
