using k8s.Models;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// Turns EndpointSlices into a sorted list of usable <c>host:port</c> endpoints, one per pod, with the target's port
/// resolved per slice (a port name can map to a different number in each slice). kube-proxy's rule across all slices of the
/// Service: the ready endpoints; only when none is ready (and <c>includeTerminating</c>), the serving terminating ones, so a
/// pod that shuts down gracefully gets no new calls while another pod can take them. Conditions are read as the API
/// documents them: a missing <c>ready</c> or <c>serving</c> means true, a missing <c>terminating</c> false.
/// <para>
/// A dual-stack Service has one slice per address family, each listing every pod. Endpoints with the same
/// <c>targetRef</c> (uid, else kind/namespace/name) are one pod, published once: by its IPv4 address when that one is
/// usable, else by its IPv6 address, so a pod listed only in the IPv6 slice (the slices update independently) is still
/// reached. Endpoints without a <c>targetRef</c> cannot be matched and are all published. Slices of addressType
/// <c>FQDN</c> are ignored, as kube-proxy does (the API defines no semantics for them). Stateless.
/// </para>
/// </summary>
internal sealed class EndpointSelector(KubernetesTarget target, bool includeTerminating)
{
    /// <summary>Selects the endpoints of all <paramref name="slices"/>; <paramref name="skippedSlices"/> counts slices without a matching port.</summary>
    public IReadOnlyList<ResolvedEndpoint> Select(IEnumerable<V1EndpointSlice> slices, out int skippedSlices) =>
        Select(slices, out skippedSlices, out _, out _);

    /// <summary>
    /// Selects the endpoints of all <paramref name="slices"/>; <paramref name="skippedSlices"/> counts slices without a
    /// matching port, and <paramref name="skippedPorts"/> lists the TCP ports those slices have (<c>name (number)</c>, sorted),
    /// so a warning can show which ports there are; <paramref name="listedEndpoints"/> counts the endpoints (with an address) of
    /// the slices with a matching port, ready or not, so an empty result can say whether pods are listed but not ready.
    /// </summary>
    public IReadOnlyList<ResolvedEndpoint> Select(IEnumerable<V1EndpointSlice> slices, out int skippedSlices, out IReadOnlyList<string> skippedPorts,
        out int listedEndpoints)
    {
        listedEndpoints = 0;
        var ready = new PodEndpoints();
        var servingTerminating = new PodEndpoints();
        skippedSlices = 0;
        SortedSet<string>? skipped = null;
        foreach (var slice in slices)
        {
            if (slice.Endpoints is null || slice.Endpoints.Count == 0 || slice.AddressType == "FQDN")
            {
                continue;
            }

            var port = ResolvePort(slice);
            if (port is null)
            {
                skippedSlices++;
                skipped ??= new SortedSet<string>(StringComparer.Ordinal);
                foreach (var p in slice.Ports ?? [])
                {
                    if (p.Protocol is null or "TCP")
                    {
                        skipped.Add(string.IsNullOrEmpty(p.Name) ? $"(unnamed) ({p.Port})" : $"{p.Name} ({p.Port})");
                    }
                }

                continue;
            }

            // IPv4 first: a fixed preference, so a pod's address only changes while its IPv4 endpoint is not usable.
            var rank = slice.AddressType == "IPv6" ? 1 : 0;
            foreach (var endpoint in slice.Endpoints)
            {
                // Addresses are fungible (same pod); the API documents that consumers may use the first.
                var address = endpoint.Addresses?.FirstOrDefault();
                if (string.IsNullOrEmpty(address))
                {
                    continue;
                }

                listedEndpoints++;
                var conditions = endpoint.Conditions;
                if (conditions?.Ready ?? true)
                {
                    ready.Add(endpoint.TargetRef, rank, new ResolvedEndpoint(address, port.Value));
                }
                else if (includeTerminating && (conditions.Serving ?? true) && (conditions.Terminating ?? false))
                {
                    servingTerminating.Add(endpoint.TargetRef, rank, new ResolvedEndpoint(address, port.Value));
                }
            }
        }

        skippedPorts = skipped is null ? [] : [.. skipped];
        return ready.Count > 0 ? ready.ToList() : servingTerminating.ToList();
    }

    private int? ResolvePort(V1EndpointSlice slice)
    {
        var ports = slice.Ports?.Where(p => p.Protocol is null or "TCP").ToList() ?? [];
        if (target.PortNumber is { } number)
        {
            // A number is the port the pods listen on; use it even when the slice lists other ports.
            return number;
        }

        if (target.PortName is { } name)
        {
            return ports.FirstOrDefault(p => string.Equals(p.Name, name, StringComparison.Ordinal))?.Port;
        }

        // No port given: the service's only port.
        return ports.Count == 1 ? ports[0].Port : null;
    }

    /// <summary>The endpoints of one condition class: the best-ranked per pod, plus every endpoint that names no pod.</summary>
    private sealed class PodEndpoints
    {
        private readonly Dictionary<string, (int Rank, ResolvedEndpoint Endpoint)> _byPod = new(StringComparer.Ordinal);
        private readonly SortedSet<ResolvedEndpoint> _unmatched = [];

        public int Count => _byPod.Count + _unmatched.Count;

        public void Add(V1ObjectReference? targetRef, int rank, ResolvedEndpoint endpoint)
        {
            var pod = !string.IsNullOrEmpty(targetRef?.Uid) ? targetRef.Uid
                : !string.IsNullOrEmpty(targetRef?.Name) ? $"{targetRef.Kind}/{targetRef.NamespaceProperty}/{targetRef.Name}"
                : null;
            if (pod is null)
            {
                _unmatched.Add(endpoint);
            }
            else if (!_byPod.TryGetValue(pod, out var current) || rank < current.Rank || (rank == current.Rank && endpoint.CompareTo(current.Endpoint) < 0))
            {
                // Ties (the same pod twice in one family while slices are rebalanced) go to the lowest, so the result is stable.
                _byPod[pod] = (rank, endpoint);
            }
        }

        public List<ResolvedEndpoint> ToList()
        {
            var all = new SortedSet<ResolvedEndpoint>(_unmatched);
            all.UnionWith(_byPod.Values.Select(v => v.Endpoint));
            return [.. all];
        }
    }
}
