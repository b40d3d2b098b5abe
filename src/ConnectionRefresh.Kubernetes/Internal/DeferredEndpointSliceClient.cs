using k8s;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// The <see cref="IEndpointSliceClient"/> shared by every resolver of a factory: creates the Kubernetes API client on the
/// first request and keeps it; a failure to create it (a credential plugin that fails, a service account file not mounted
/// yet) fails only that request, which the resolver retries with its backoff, and is not remembered.
/// Thread-safe: the client is created under <c>_lock</c> and published once.
/// </summary>
internal sealed class DeferredEndpointSliceClient(Func<IKubernetes> create) : IEndpointSliceClient, IDisposable
{
    private readonly Lock _lock = new();
    private IKubernetes? _kubernetes;
    private KubernetesEndpointSliceClient? _client;
    private bool _disposed;

    public Task<EndpointSliceSnapshot> ListAsync(string ns, string service, CancellationToken cancellationToken) =>
        Client().ListAsync(ns, service, cancellationToken);

    public IAsyncEnumerable<EndpointSliceEvent> WatchAsync(string ns, string service, string resourceVersion, TimeSpan timeout, CancellationToken cancellationToken) =>
        Client().WatchAsync(ns, service, resourceVersion, timeout, cancellationToken);

    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            _kubernetes?.Dispose();
        }
    }

    private KubernetesEndpointSliceClient Client()
    {
        if (Volatile.Read(ref _client) is { } client)
        {
            return client;
        }

        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_client is null)
            {
                _kubernetes = create();
                Volatile.Write(ref _client, new KubernetesEndpointSliceClient(_kubernetes));
            }

            return _client;
        }
    }
}
