using ConnectionRefresh.Kubernetes.Internal;

namespace ConnectionRefresh.Kubernetes;

/// <summary>
/// Options of the <c>kubernetes:///</c> resolver registered by
/// <c>services.AddKubernetesResolver()</c>; bound from the configuration section
/// <c>ConnectionRefresh:Kubernetes</c> and validated at start-up.
/// </summary>
public sealed class KubernetesResolverOptions
{
    /// <summary>
    /// The Kubernetes API server to talk to, for example <c>http://127.0.0.1:8001</c> behind
    /// <c>kubectl proxy</c>. Default <see langword="null"/>: inside a pod the API server comes from
    /// <c>KUBERNETES_SERVICE_HOST</c>/<c>KUBERNETES_SERVICE_PORT</c> and the service account; outside
    /// a cluster from the kubeconfig (<c>KUBECONFIG</c> or <c>~/.kube/config</c>).
    /// Must be an absolute <c>http</c> or <c>https</c> URI; cannot be combined with <see cref="KubeconfigPath"/>.
    /// When set, the token (and, for https, the CA) still come from <see cref="ServiceAccountPath"/> when those files exist.
    /// </summary>
    public Uri? ApiServer { get; set; }

    /// <summary>
    /// A kubeconfig file to use instead of the in-cluster configuration (local development); its current context gives the
    /// server, CA, user (<c>token</c>, <c>tokenFile</c> re-read on every request, client certificate or an <c>exec</c>
    /// credential plugin) and namespace. Checked at start-up: the file must exist and its current context must name a
    /// cluster with a server. Default <see langword="null"/> (in-cluster when running in a pod, otherwise the default kubeconfig).
    /// Cannot be combined with <see cref="ApiServer"/>.
    /// </summary>
    public string? KubeconfigPath { get; set; }

    /// <summary>
    /// The directory of the pod's service account: <c>token</c> (re-read on every request to the API
    /// server, so a rotated token is picked up), <c>ca.crt</c> and <c>namespace</c> (the namespace of
    /// <c>kubernetes:///service:port</c> targets). In a pod (no <see cref="ApiServer"/>) the token and <c>ca.crt</c> are
    /// required: while one is missing or unreadable, requests fail and are retried with the backoff (calls fail
    /// <c>Unavailable</c> until endpoints are known). A directory that does not exist (no token mounted:
    /// <c>automountServiceAccountToken: false</c>) is logged once as an error, and still retried. With <see cref="ApiServer"/>
    /// both are used when present.
    /// Default <c>/var/run/secrets/kubernetes.io/serviceaccount</c>. Must not be empty.
    /// </summary>
    public string ServiceAccountPath { get; set; } = KubernetesResolverDefaults.ServiceAccountPath;

    /// <summary>
    /// When no endpoint of the Service is ready, use the endpoints that are terminating but still serving
    /// (conditions <c>serving: true</c>, <c>terminating: true</c>), so calls can continue to reach pods that shut down
    /// gracefully when no ready pod is left; as long as any endpoint is ready, only ready ones are used (kube-proxy's rule).
    /// Default <see langword="false"/>: only <c>ready</c> endpoints are used.
    /// </summary>
    public bool IncludeTerminatingEndpoints { get; set; }

    /// <summary>
    /// How often the resolver relists all EndpointSlices even while its watch is healthy (±20 % jitter),
    /// a safety net against missed events. Default 5 minutes; allowed 1 second to 24 hours.
    /// </summary>
    public TimeSpan ResyncInterval { get; set; } = KubernetesResolverDefaults.ResyncInterval;

    /// <summary>
    /// The first delay before reconnecting to an unreachable API server; each failure doubles it up to
    /// <see cref="MaxBackoff"/>, with ±20 % jitter; a healthy watch resets it. The last known endpoints
    /// stay in use meanwhile. Default 1 second; allowed 10 milliseconds to 1 minute.
    /// </summary>
    public TimeSpan InitialBackoff { get; set; } = KubernetesResolverDefaults.InitialBackoff;

    /// <summary>
    /// The longest reconnect delay (before jitter of ±20 %). Default 30 seconds; allowed 100 milliseconds
    /// to 1 hour, and not less than <see cref="InitialBackoff"/>.
    /// </summary>
    public TimeSpan MaxBackoff { get; set; } = KubernetesResolverDefaults.MaxBackoff;

    /// <summary>Where each setting got its value (configuration key or code), for start-up errors; not bindable.</summary>
    internal Shared.SettingOrigins Origins { get; } = new(nameof(KubernetesResolverOptions));

    /// <summary>
    /// The path of the configuration section these options were last bound from (<c>ConnectionRefresh:Kubernetes</c> or the
    /// section given to <c>AddKubernetesResolver(section)</c>), or null when none was: errors that tell the user to set a
    /// setting name its key there. Not bindable.
    /// </summary>
    internal string? ConfigurationSectionPath { get; set; }
}
