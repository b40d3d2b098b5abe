namespace ConnectionRefresh.Internal;

/// <summary>
/// Names of the HTTP clients that use ConnectionRefresh. Filled while services are registered (single-threaded),
/// read afterwards.
/// </summary>
internal sealed class ConnectionRefreshRegistry
{
    public HashSet<string> ClientNames { get; } = new(StringComparer.Ordinal);
}

/// <summary>The application's SocketsHttpHandler configuration for one client, replayed on every new handler.</summary>
internal sealed class SocketsHttpHandlerActions
{
    public List<Action<SocketsHttpHandler, IServiceProvider>> Actions { get; } = [];
}
