namespace ConnectionRefresh.Internal;

/// <summary>
/// ConnectionRefresh replaces the client's primary handler. These checks make sure that nothing the application
/// configured on the primary handler is lost in silence, and that nothing replaces ours afterwards.
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
            throw new InvalidOperationException(
                $"HTTP client '{clientName}' configures {setting} on its primary handler, which AddConnectionRefresh replaces. {Advice}");
        }
    }

    /// <summary>Throws when the application replaced our handler after AddConnectionRefresh.</summary>
    public static void ThrowIfReplaced(HttpMessageHandler? primary, string clientName)
    {
        if (primary is not ConnectionRefreshHandler)
        {
            throw new InvalidOperationException(
                $"HTTP client '{clientName}' replaced its primary handler (with {primary?.GetType().FullName ?? "null"}) after AddConnectionRefresh, " +
                $"which turns connection refresh off. {Advice}");
        }
    }

    private static string? ConfiguredSetting(SocketsHttpHandler handler)
    {
        var ssl = handler.SslOptions;
        return ssl.ClientCertificates is { Count: > 0 } || ssl.ClientCertificateContext is not null || ssl.LocalCertificateSelectionCallback is not null
                ? "client certificates"
            : ssl.RemoteCertificateValidationCallback is not null ? "SslOptions.RemoteCertificateValidationCallback"
            : handler.Proxy is not null ? "a proxy"
            : handler.Credentials is not null ? "credentials"
            : handler.ConnectCallback is not null ? "a ConnectCallback"
            : handler.PlaintextStreamFilter is not null ? "a PlaintextStreamFilter"
            : null;
    }

    private static string? ConfiguredSetting(HttpClientHandler handler)
        => handler.ClientCertificateOptions == ClientCertificateOption.Manual && handler.ClientCertificates.Count > 0 ? "client certificates"
            : handler.ServerCertificateCustomValidationCallback is not null ? "ServerCertificateCustomValidationCallback"
            : handler.Proxy is not null ? "a proxy"
            : handler.Credentials is not null ? "credentials"
            : null;
}
