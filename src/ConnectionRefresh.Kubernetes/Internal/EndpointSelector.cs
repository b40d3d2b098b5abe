using k8s.Models;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// Turns EndpointSlices into the de-duplicated, sorted union of usable <c>host:port</c> endpoints, with the target's port
/// resolved per slice (a port name can map to a different number in each slice). kube-proxy's rule across all slices of the
/// Service: the ready endpoints; only when none is ready (and <c>includeTerminating</c>), the serving terminating ones, so a
/// pod that shuts down gracefully gets no new calls while another pod can take them. Conditions are read as the API
/// documents them: a missing <c>ready</c> or <c>serving</c> means true, a missing <c>terminating</c> false. Stateless.
/// </summary>
internal sealed class EndpointSelector(KubernetesTarget target, bool includeTerminating)
{
    /// <summary>Selects the endpoints of all <paramref name="slices"/>; <paramref name="skippedSlices"/> counts slices without a matching port.</summary>
    public IReadOnlyList<ResolvedEndpoint> Select(IEnumerable<V1EndpointSlice> slices, out int skippedSlices)
    {
        var ready = new SortedSet<ResolvedEndpoint>();
        var servingTerminating = new SortedSet<ResolvedEndpoint>();
        skippedSlices = 0;
        foreach (var slice in slices)
        {
            if (slice.Endpoints is null || slice.Endpoints.Count == 0)
            {
                continue;
            }

            var port = ResolvePort(slice);
            if (port is null)
            {
                skippedSlices++;
                continue;
            }

            foreach (var endpoint in slice.Endpoints)
            {
                // Addresses are fungible (same pod); the API documents that consumers may use the first.
                var address = endpoint.Addresses?.FirstOrDefault();
                if (string.IsNullOrEmpty(address))
                {
                    continue;
                }

                var conditions = endpoint.Conditions;
                if (conditions?.Ready ?? true)
                {
                    ready.Add(new ResolvedEndpoint(address, port.Value));
                }
                else if (includeTerminating && (conditions.Serving ?? true) && (conditions.Terminating ?? false))
                {
                    servingTerminating.Add(new ResolvedEndpoint(address, port.Value));
                }
            }
        }

        return ready.Count > 0 ? [.. ready] : [.. servingTerminating];
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
}
