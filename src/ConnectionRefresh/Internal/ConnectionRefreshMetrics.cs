using System.Diagnostics.Metrics;

namespace ConnectionRefresh.Internal;

/// <summary>The instruments of the <c>ConnectionRefresh</c> meter, shared by every client (tagged by client name).</summary>
internal sealed class ConnectionRefreshMetrics : IDisposable
{
    public const string MeterName = "ConnectionRefresh";

    private readonly Meter _meter;

    public ConnectionRefreshMetrics(IMeterFactory? meterFactory)
    {
        // Without IMeterFactory (no AddMetrics) a plain Meter still reaches MeterListeners and exporters.
        _meter = meterFactory?.Create(MeterName) ?? new Meter(MeterName);
        Opened = _meter.CreateCounter<long>("connectionrefresh.connections.opened", "{connection}",
            "TCP connections opened by ConnectionRefresh handlers.");
        Retired = _meter.CreateCounter<long>("connectionrefresh.connections.retired", "{connection}",
            "Connections that stopped taking new calls, by reason: age, request_count, connection_failure, disposed.");
        Draining = _meter.CreateUpDownCounter<long>("connectionrefresh.connections.draining", "{connection}",
            "Retired connections whose last calls are still running.");
        CallsCut = _meter.CreateCounter<long>("connectionrefresh.calls.cut", "{connection}",
            "Retired connections whose calls were cut because DrainTimeout expired.");
    }

    public Counter<long> Opened { get; }

    public Counter<long> Retired { get; }

    public UpDownCounter<long> Draining { get; }

    public Counter<long> CallsCut { get; }

    public void Dispose() => _meter.Dispose();
}
