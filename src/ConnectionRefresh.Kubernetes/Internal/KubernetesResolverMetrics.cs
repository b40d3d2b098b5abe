using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// The meter <c>ConnectionRefresh.Kubernetes</c>; every measurement is tagged with the service and
/// namespace. Thread-safe: instruments are.
/// </summary>
internal sealed class KubernetesResolverMetrics
{
    public const string MeterName = "ConnectionRefresh.Kubernetes";

    private readonly Gauge<int> _endpoints;
    private readonly Gauge<int> _slices;
    private readonly Gauge<double> _lastUpdate;
    private readonly Counter<long> _watchRestarts;
    private readonly Counter<long> _errors;

    public KubernetesResolverMetrics(IMeterFactory meterFactory)
    {
        ArgumentNullException.ThrowIfNull(meterFactory);
        var meter = meterFactory.Create(MeterName);
        _endpoints = meter.CreateGauge<int>("connectionrefresh.kubernetes.endpoints", "{endpoint}",
            "Endpoints the resolver currently publishes for a service.");
        _slices = meter.CreateGauge<int>("connectionrefresh.kubernetes.endpoint_slices", "{slice}",
            "EndpointSlices the resolver currently knows for a service.");
        _lastUpdate = meter.CreateGauge<double>("connectionrefresh.kubernetes.last_update_time", "s",
            "Unix time of the last endpoint update received from the API server.");
        _watchRestarts = meter.CreateCounter<long>("connectionrefresh.kubernetes.watch.restarts", "{restart}",
            "Watches that ended and were started again (reason: resync, refresh, expired, closed, error).");
        _errors = meter.CreateCounter<long>("connectionrefresh.kubernetes.errors", "{error}",
            "Failed LIST or WATCH requests to the API server.");
    }

    public void RecordUpdate(KubernetesTarget target, string ns, int endpoints, int slices, DateTimeOffset now)
    {
        var tags = Tags(target, ns);
        _endpoints.Record(endpoints, tags);
        _slices.Record(slices, tags);
        _lastUpdate.Record(now.ToUnixTimeMilliseconds() / 1000.0, tags);
    }

    public void WatchRestarted(KubernetesTarget target, string ns, string reason)
    {
        var tags = Tags(target, ns);
        tags.Add("reason", reason);
        _watchRestarts.Add(1, tags);
    }

    public void Error(KubernetesTarget target, string ns, Exception error)
    {
        var tags = Tags(target, ns);
        tags.Add("error.type", error.GetType().Name);
        _errors.Add(1, tags);
    }

    private static TagList Tags(KubernetesTarget target, string ns) => new()
    {
        { "k8s.namespace.name", ns },
        { "k8s.service.name", target.Service },
    };
}
