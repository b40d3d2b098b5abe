using System.Net;
using System.Runtime.CompilerServices;
using k8s;
using k8s.Autorest;
using k8s.Models;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// <see cref="IEndpointSliceClient"/> over the official client: <c>GET
/// /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector=kubernetes.io/service-name={service}</c>,
/// once as a paged LIST and once as a WATCH. Thread-safe: the underlying client is.
/// </summary>
internal sealed class KubernetesEndpointSliceClient(IKubernetes kubernetes) : IEndpointSliceClient
{
    public async Task<EndpointSliceSnapshot> ListAsync(string ns, string service, CancellationToken cancellationToken)
    {
        var slices = new List<V1EndpointSlice>();
        string? continueToken = null;
        string resourceVersion;
        do
        {
            using var response = await kubernetes.DiscoveryV1.ListNamespacedEndpointSliceWithHttpMessagesAsync(
                ns,
                labelSelector: Selector(service),
                limit: KubernetesResolverDefaults.ListPageSize,
                continueParameter: continueToken,
                cancellationToken: cancellationToken).ConfigureAwait(false);
            var list = response.Body;
            slices.AddRange(list.Items ?? []);
            continueToken = list.Metadata?.ContinueProperty;
            resourceVersion = list.Metadata?.ResourceVersion ?? "";
        }
        while (!string.IsNullOrEmpty(continueToken));

        return new EndpointSliceSnapshot(slices, resourceVersion);
    }

    public async IAsyncEnumerable<EndpointSliceEvent> WatchAsync(
        string ns, string service, string resourceVersion, TimeSpan timeout, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        // The client reports in-stream ERROR events (a Status object, e.g. 410 Gone) and undecodable lines
        // through this callback and keeps reading; the first one ends this watch.
        Exception? streamError = null;
        var events = kubernetes.DiscoveryV1.WatchListNamespacedEndpointSliceAsync(
            ns,
            allowWatchBookmarks: true,
            labelSelector: Selector(service),
            resourceVersion: string.IsNullOrEmpty(resourceVersion) ? null : resourceVersion,
            timeoutSeconds: (int)Math.Clamp(Math.Ceiling(timeout.TotalSeconds), 1, int.MaxValue),
            onError: ex => streamError ??= ex,
            cancellationToken: cancellationToken);

        var enumerator = events.GetAsyncEnumerator(cancellationToken);
        await using var _ = enumerator.ConfigureAwait(false);
        while (true)
        {
            bool moved;
            try
            {
                moved = await enumerator.MoveNextAsync().ConfigureAwait(false);
            }
            catch (HttpOperationException ex) when (ex.Response?.StatusCode == HttpStatusCode.Gone)
            {
                throw new ResourceVersionExpiredException("The watch's resourceVersion is too old (HTTP 410 Gone).", ex);
            }

            if (streamError is not null)
            {
                throw Translate(streamError);
            }

            if (!moved)
            {
                yield break;
            }

            var (type, slice) = enumerator.Current;
            if (type == WatchEventType.Error)
            {
                throw new KubernetesException("The watch returned an ERROR event.");
            }

            if (slice is not null)
            {
                yield return new EndpointSliceEvent(type, slice);
            }
        }
    }

    private static Exception Translate(Exception error) =>
        error is KubernetesException { Status.Code: (int)HttpStatusCode.Gone }
            ? new ResourceVersionExpiredException("The watch's resourceVersion is too old (ERROR event 410 Gone).", error)
            : error;

    private static string Selector(string service) => $"{KubernetesResolverDefaults.ServiceNameLabel}={service}";
}
