using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Internal;

/// <summary>Metrics and logs of one client, tagged with its name. Stateless apart from immutable fields.</summary>
internal sealed partial class ConnectionRefreshTelemetry
{
    private readonly ConnectionRefreshMetrics _metrics;
    private readonly ILogger _logger;
    private readonly KeyValuePair<string, object?> _client;

    public ConnectionRefreshTelemetry(string clientName, ConnectionRefreshMetrics metrics, ILogger logger)
    {
        ClientName = clientName;
        _metrics = metrics;
        _logger = logger;
        _client = new("client", clientName);
    }

    public string ClientName { get; }

    public void Opened(string host, int port)
    {
        _metrics.Opened.Add(1, _client);
        LogOpened(_logger, ClientName, host, port);
    }

    public void Retired(RetirementReason reason)
    {
        _metrics.Retired.Add(1, _client, new("reason", ReasonTag(reason)));
        _metrics.Draining.Add(1, _client);
        LogRetired(_logger, ClientName, reason);
    }

    public void Closed() => _metrics.Draining.Add(-1, _client);

    public void AgeRestarted() => LogAgeRestarted(_logger, ClientName);

    public void ConnectionFailed(Exception exception) => LogConnectionFailed(_logger, ClientName, exception);

    public void Http11Required(Exception exception) => LogHttp11Required(_logger, ClientName, exception);

    public void DrainCut()
    {
        _metrics.CallsCut.Add(1, _client);
        LogDrainCut(_logger, ClientName);
    }

    public void DrainCutFailed(Exception exception) => LogDrainCutFailed(_logger, ClientName, exception);

    internal static string ReasonTag(RetirementReason reason) => reason switch
    {
        RetirementReason.Age => "age",
        RetirementReason.RequestCount => "request_count",
        RetirementReason.ConnectionFailure => "connection_failure",
        _ => "disposed",
    };

    [LoggerMessage(1, LogLevel.Debug, "Client '{ClientName}' opened a connection to {Host}:{Port}.")]
    private static partial void LogOpened(ILogger logger, string clientName, string host, int port);

    [LoggerMessage(2, LogLevel.Debug, "Client '{ClientName}' retired a connection ({Reason}); new calls use a new connection, running calls finish on the old one.")]
    private static partial void LogRetired(ILogger logger, string clientName, RetirementReason reason);

    [LoggerMessage(7, LogLevel.Debug, "Client '{ClientName}': a connection took the place of an older one that closed (the server closed it, or it was idle); the age and request budget now count from the newer connection.")]
    private static partial void LogAgeRestarted(ILogger logger, string clientName);

    [LoggerMessage(3, LogLevel.Warning, "Client '{ClientName}' lost a connection or could not open one (keepalive timeout, reset, ConnectTimeout); its calls fail with Unavailable and new calls use a new connection.")]
    private static partial void LogConnectionFailed(ILogger logger, string clientName, Exception exception);

    [LoggerMessage(6, LogLevel.Error, "Client '{ClientName}': the server requires HTTP/1.1 (HTTP/2 error HTTP_1_1_REQUIRED), but gRPC needs HTTP/2; the server, or a proxy in front of it, is misconfigured. Calls fail until it accepts HTTP/2.")]
    private static partial void LogHttp11Required(ILogger logger, string clientName, Exception exception);

    [LoggerMessage(4, LogLevel.Warning, "Client '{ClientName}' cut the calls still running on a retired connection after DrainTimeout.")]
    private static partial void LogDrainCut(ILogger logger, string clientName);

    [LoggerMessage(5, LogLevel.Error, "Client '{ClientName}' failed while cutting the calls of a retired connection after DrainTimeout.")]
    private static partial void LogDrainCutFailed(ILogger logger, string clientName, Exception exception);
}
