using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// The instruments of the <c>ConnectionRefresh.Server</c> meter. Instruments are thread-safe; this type only
/// holds them.
/// </summary>
internal sealed class ServerConnectionAgeMetrics
{
    public const string MeterName = "ConnectionRefresh.Server";
    public const string ClosesName = "connectionrefresh.server.connection.closes";
    public const string AbortsName = "connectionrefresh.server.connection.aborts";
    public const string AgeName = "connectionrefresh.server.connection.age";
    public const string ReasonTag = "connectionrefresh.close.reason";

    private readonly Counter<long> _closes;
    private readonly Counter<long> _aborts;
    private readonly Histogram<double> _age;

    public ServerConnectionAgeMetrics(IMeterFactory? meterFactory)
    {
        // Without a meter factory (no host), a meter of our own: instruments still work for listeners.
        var meter = meterFactory?.Create(MeterName) ?? new Meter(MeterName);
        _closes = meter.CreateCounter<long>(
            ClosesName,
            unit: "{connection}",
            description: "Connections this package started to close gracefully (GOAWAY), by reason: max_age or max_idle (not Kestrel's closes at shutdown).");
        _aborts = meter.CreateCounter<long>(
            AbortsName,
            unit: "{connection}",
            description: "Connections aborted because calls still ran when MaxConnectionAgeGrace ended.");
        _age = meter.CreateHistogram<double>(
            AgeName,
            unit: "s",
            description: "Age of connections when they ended, by close reason: max_age, max_idle, shutdown (closed by Kestrel because the application was stopping), or none (closed by the client or by Kestrel itself).");
    }

    public void CloseStarted(CloseReason reason) => _closes.Add(1, new TagList { { ReasonTag, ToTag(reason) } });

    public void Aborted(CloseReason reason) => _aborts.Add(1, new TagList { { ReasonTag, ToTag(reason) } });

    public void Ended(CloseReason reason, TimeSpan age) => _age.Record(age.TotalSeconds, new TagList { { ReasonTag, ToTag(reason) } });

    public static string ToTag(CloseReason reason) => reason switch
    {
        CloseReason.MaxAge => "max_age",
        CloseReason.MaxIdle => "max_idle",
        CloseReason.Shutdown => "shutdown",
        _ => "none",
    };
}
