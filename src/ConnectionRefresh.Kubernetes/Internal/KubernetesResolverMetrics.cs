using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// The meter <c>ConnectionRefresh.Kubernetes</c>; every measurement is tagged with the service and namespace.
/// The endpoint, slice and last-update gauges are observable: each collection reports one measurement per service
/// (namespace and name, the tags) that a live (started, not disposed) resolver watches, and none once its last resolver is
/// disposed (a synchronous gauge would keep exporting a disposed resolver's last value for good). Several channels for one
/// Service have one resolver each; they watch the same EndpointSlices, so the service is reported once, with the values of
/// the resolver that received the latest update (the most current view): one measurement per resolver gave an exporter
/// several series with the same tags (OpenTelemetry: an observable instrument must not observe one attribute set twice),
/// and a per-channel tag would have unbounded cardinality. A service whose resolvers have not listed yet reports 0
/// endpoints and slices (so "no endpoints" can be alerted on from the start, e.g. while RBAC is missing) and no update time.
/// Thread-safe: the set of live resolvers is guarded by <c>_lock</c>; each resolver's values are one immutable snapshot,
/// swapped atomically; counters are thread-safe (and add up across resolvers, as counters should).
/// </summary>
internal sealed class KubernetesResolverMetrics
{
    public const string MeterName = "ConnectionRefresh.Kubernetes";

    private readonly Counter<long> _watchRestarts;
    private readonly Counter<long> _errors;
    private readonly Lock _lock = new();
    private readonly HashSet<ResolverGauges> _live = [];

    public KubernetesResolverMetrics(IMeterFactory meterFactory)
    {
        ArgumentNullException.ThrowIfNull(meterFactory);
        var meter = meterFactory.Create(MeterName);
        meter.CreateObservableGauge("connectionrefresh.kubernetes.endpoints", () => Observe(static v => (int?)v.Endpoints), "{endpoint}",
            "Endpoints currently published for a service (once, however many channels resolve it).");
        meter.CreateObservableGauge("connectionrefresh.kubernetes.endpoint_slices", () => Observe(static v => (int?)v.Slices), "{slice}",
            "EndpointSlices currently known for a service.");
        meter.CreateObservableGauge("connectionrefresh.kubernetes.last_update_time", () => Observe(static v => v.LastUpdate), "s",
            "Unix time of the last endpoint update received from the API server.");
        _watchRestarts = meter.CreateCounter<long>("connectionrefresh.kubernetes.watch.restarts", "{restart}",
            "Watches that ended and were started again (reason: resync, refresh, expired, closed, error).");
        _errors = meter.CreateCounter<long>("connectionrefresh.kubernetes.errors", "{error}",
            "Failed LIST or WATCH requests to the API server.");
    }

    /// <summary>
    /// Registers a resolver's gauges: reported from <see cref="ResolverGauges.Start"/> until <see cref="ResolverGauges.Dispose"/>.
    /// </summary>
    public ResolverGauges Register(KubernetesTarget target, string ns)
    {
        var gauges = new ResolverGauges(this, (ns, target.Service), Tags(target, ns).ToArray());
        lock (_lock)
        {
            _live.Add(gauges);
        }

        return gauges;
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

    private List<Measurement<T>> Observe<T>(Func<GaugeValues, T?> value)
        where T : struct
    {
        ResolverGauges[] live;
        lock (_lock)
        {
            live = [.. _live];
        }

        // One measurement per tag set: the most current resolver of each service.
        var current = new Dictionary<(string Namespace, string Service), (ResolverGauges Gauges, GaugeValues Values)>();
        foreach (var gauges in live)
        {
            if (gauges.Values is { } values
                && (!current.TryGetValue(gauges.Key, out var best) || IsMoreCurrent(values, best.Values)))
            {
                current[gauges.Key] = (gauges, values);
            }
        }

        var measurements = new List<Measurement<T>>(current.Count);
        foreach (var (gauges, values) in current.Values)
        {
            if (value(values) is { } measured)
            {
                measurements.Add(new Measurement<T>(measured, gauges.Tags));
            }
        }

        return measurements;
    }

    /// <summary>
    /// Whether <paramref name="candidate"/> is a later view of the service than <paramref name="best"/>: a later update (none
    /// counts as earliest); on a tie, more endpoints, then more slices, so the choice does not depend on the order of resolvers.
    /// </summary>
    private static bool IsMoreCurrent(GaugeValues candidate, GaugeValues best) =>
        (candidate.LastUpdate ?? double.MinValue, candidate.Endpoints, candidate.Slices).CompareTo((best.LastUpdate ?? double.MinValue, best.Endpoints, best.Slices)) > 0;

    private void Unregister(ResolverGauges gauges)
    {
        lock (_lock)
        {
            _live.Remove(gauges);
        }
    }

    private static TagList Tags(KubernetesTarget target, string ns) => new()
    {
        { "k8s.namespace.name", ns },
        { "k8s.service.name", target.Service },
    };

    /// <summary>One resolver's latest values, read together by a collection; no update time before the first LIST.</summary>
    internal sealed record GaugeValues(int Endpoints, int Slices, double? LastUpdate);

    /// <summary>One resolver's gauge values. Thread-safe: the values are replaced as a whole.</summary>
    internal sealed class ResolverGauges(KubernetesResolverMetrics owner, (string Namespace, string Service) key, KeyValuePair<string, object?>[] tags)
        : IDisposable
    {
        private GaugeValues? _values;

        /// <summary>The service the resolver watches: resolvers with the same key are reported as one.</summary>
        internal (string Namespace, string Service) Key => key;

        internal KeyValuePair<string, object?>[] Tags => tags;

        /// <summary>Null until <see cref="Start"/>: a resolver that was created but not started reports nothing.</summary>
        internal GaugeValues? Values => Volatile.Read(ref _values);

        /// <summary>The resolver started: 0 endpoints and slices until its first LIST.</summary>
        public void Start() => Interlocked.CompareExchange(ref _values, new GaugeValues(0, 0, null), null);

        public void Update(int endpoints, int slices, DateTimeOffset now) =>
            Volatile.Write(ref _values, new GaugeValues(endpoints, slices, now.ToUnixTimeMilliseconds() / 1000.0));

        /// <summary>Stops reporting this resolver; idempotent. A later <see cref="Update"/> is ignored by collections.</summary>
        public void Dispose() => owner.Unregister(this);
    }
}
