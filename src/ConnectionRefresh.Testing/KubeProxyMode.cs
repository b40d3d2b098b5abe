namespace ConnectionRefresh.Testing;

/// <summary>How the simulated ClusterIP spreads new TCP connections over the ready pods.</summary>
public enum KubeProxyMode
{
    /// <summary>
    /// An in-process TCP proxy (like kube-proxy's historical <c>userspace</c> mode): every new connection goes to a
    /// uniformly random ready pod and stays pinned there. Works everywhere; the default.
    /// </summary>
    Userspace = 0,

    /// <summary>
    /// The kernel's own machinery, as kube-proxy's <c>iptables</c> mode sets it up: <c>nat</c> rules with
    /// <c>-m statistic --mode random</c> DNAT per endpoint (KUBE-SVC / KUBE-SEP chains), rewritten when pods change,
    /// conntrack keeping established connections on their pod. Runs inside a network namespace that the cluster
    /// creates and removes; needs Linux, root, <c>ip</c> and <c>iptables</c>.
    /// Check <see cref="KubeProxySupport.IsIptablesSupported(out string?)"/> first.
    /// </summary>
    Iptables = 1,
}
