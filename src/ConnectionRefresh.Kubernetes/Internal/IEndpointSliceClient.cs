using k8s;
using k8s.Models;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>The two API calls the resolver makes: LIST and WATCH of one Service's EndpointSlices.</summary>
internal interface IEndpointSliceClient
{
    /// <summary>Lists all slices of <paramref name="service"/> (all pages) and the list's resourceVersion.</summary>
    Task<EndpointSliceSnapshot> ListAsync(string ns, string service, CancellationToken cancellationToken);

    /// <summary>
    /// Watches from <paramref name="resourceVersion"/> with bookmarks. Throws
    /// <see cref="ResourceVersionExpiredException"/> on <c>410 Gone</c>; ends when the server closes the stream.
    /// </summary>
    IAsyncEnumerable<EndpointSliceEvent> WatchAsync(string ns, string service, string resourceVersion, TimeSpan timeout, CancellationToken cancellationToken);
}

/// <summary>The result of a LIST.</summary>
internal sealed record EndpointSliceSnapshot(IReadOnlyList<V1EndpointSlice> Slices, string ResourceVersion);

/// <summary>One WATCH event.</summary>
internal readonly record struct EndpointSliceEvent(WatchEventType Type, V1EndpointSlice Slice);
