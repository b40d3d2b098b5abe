namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>Defaults and allowed ranges of <see cref="KubernetesResolverOptions"/>, in one place.</summary>
internal static class KubernetesResolverDefaults
{
    /// <summary>The configuration section the parameterless overload binds.</summary>
    public const string ConfigurationSection = "ConnectionRefresh:Kubernetes";

    /// <summary>The URI scheme the resolver handles.</summary>
    public const string Scheme = "kubernetes";

    /// <summary>Where Kubernetes mounts the pod's service account (token, ca.crt, namespace).</summary>
    public const string ServiceAccountPath = "/var/run/secrets/kubernetes.io/serviceaccount";

    public static readonly TimeSpan ResyncInterval = TimeSpan.FromMinutes(5);
    public static readonly TimeSpan MinResyncInterval = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MaxResyncInterval = TimeSpan.FromHours(24);

    public static readonly TimeSpan InitialBackoff = TimeSpan.FromSeconds(1);
    public static readonly TimeSpan MinInitialBackoff = TimeSpan.FromMilliseconds(10);
    public static readonly TimeSpan MaxInitialBackoff = TimeSpan.FromMinutes(1);

    public static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(30);
    public static readonly TimeSpan MinMaxBackoff = TimeSpan.FromMilliseconds(100);
    public static readonly TimeSpan MaxMaxBackoff = TimeSpan.FromHours(1);

    /// <summary>Backoff and resync delays are multiplied by a random factor in [1 - j, 1 + j].</summary>
    public const double JitterFraction = 0.2;

    /// <summary>A watch that stayed open this long (or delivered an event) was healthy: the backoff resets.</summary>
    public static readonly TimeSpan HealthyWatchDuration = TimeSpan.FromSeconds(10);

    /// <summary>A <c>Refresh()</c> that is not answered by a live watch relists at most this often.</summary>
    public static readonly TimeSpan MinRefreshInterval = TimeSpan.FromSeconds(1);

    /// <summary>
    /// A watch that was (re)started, or delivered an event or a BOOKMARK, within this window counts as live: a
    /// <c>Refresh()</c> is answered by it and does not relist. grpc-dotnet asks for a refresh whenever a subchannel goes
    /// idle or fails, which includes a connection closed by a server-side max connection age (GOAWAY); relisting each
    /// time would cost the API server one LIST per connection closed in every client. The API server's watch cache sends a BOOKMARK to watchers that allow
    /// them about once a minute (<c>defaultBookmarkFrequency = time.Minute</c> in k8s.io/apiserver's cacher, plus one 2 s
    /// before the watch's timeout), so a healthy watch on a quiet Service is never silent much longer than that. Two
    /// minutes tolerates one late or dropped bookmark (bookmarks are best effort) and still catches a watch that silently
    /// stopped delivering well before the resync. An API server that sends no bookmarks costs at most one LIST per window
    /// per client on refresh requests.
    /// </summary>
    public static readonly TimeSpan WatchLivenessWindow = TimeSpan.FromMinutes(2);

    /// <summary>Page size of a LIST (services with thousands of endpoints have many slices).</summary>
    public const int ListPageSize = 500;

    /// <summary>The label that ties an EndpointSlice to its Service.</summary>
    public const string ServiceNameLabel = "kubernetes.io/service-name";
}
