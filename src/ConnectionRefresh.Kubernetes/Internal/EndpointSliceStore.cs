using k8s.Models;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// The current EndpointSlices of one Service, by slice name. Not thread-safe: only the resolver's
/// watch loop touches it.
/// </summary>
internal sealed class EndpointSliceStore
{
    private readonly Dictionary<string, V1EndpointSlice> _slices = new(StringComparer.Ordinal);

    public int Count => _slices.Count;

    public IEnumerable<V1EndpointSlice> Slices => _slices.Values;

    /// <summary>Replaces everything with the result of a LIST.</summary>
    public void ReplaceAll(IEnumerable<V1EndpointSlice> slices)
    {
        _slices.Clear();
        foreach (var slice in slices)
        {
            Upsert(slice);
        }
    }

    /// <summary>Adds or replaces one slice (ADDED / MODIFIED).</summary>
    public void Upsert(V1EndpointSlice slice)
    {
        var name = slice.Metadata?.Name;
        if (!string.IsNullOrEmpty(name))
        {
            _slices[name] = slice;
        }
    }

    /// <summary>Removes one slice (DELETED): its endpoints are gone, the other slices stay.</summary>
    public void Remove(V1EndpointSlice slice)
    {
        var name = slice.Metadata?.Name;
        if (!string.IsNullOrEmpty(name))
        {
            _slices.Remove(name);
        }
    }
}
