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

    /// <summary>A <c>Refresh()</c> relists at most this often; the watch already delivers changes.</summary>
    public static readonly TimeSpan MinRefreshInterval = TimeSpan.FromSeconds(1);

    /// <summary>Page size of a LIST (services with thousands of endpoints have many slices).</summary>
    public const int ListPageSize = 500;

    /// <summary>The label that ties an EndpointSlice to its Service.</summary>
    public const string ServiceNameLabel = "kubernetes.io/service-name";
}
