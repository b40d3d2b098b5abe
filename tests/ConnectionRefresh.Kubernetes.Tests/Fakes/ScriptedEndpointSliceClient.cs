using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using ConnectionRefresh.Kubernetes.Internal;
using k8s.Models;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>An in-memory <see cref="IEndpointSliceClient"/>: LIST answers from a script; a WATCH streams what the test writes.</summary>
internal sealed class ScriptedEndpointSliceClient : IEndpointSliceClient
{
    private int _lists;
    private int _watches;

    /// <summary>Answers each LIST (argument: the 1-based LIST number); throw to fail it.</summary>
    public Func<int, EndpointSliceSnapshot> OnList { get; set; } = _ => new EndpointSliceSnapshot([], "1");

    public int Lists => Volatile.Read(ref _lists);

    public int Watches => Volatile.Read(ref _watches);

    public ConcurrentQueue<string> WatchResourceVersions { get; } = new();

    /// <summary>
    /// The current watch's events; complete the writer to end the watch, with an exception to fail it (the next watch then
    /// gets a fresh channel; a cancelled watch leaves it to the next one).
    /// </summary>
    public Channel<EndpointSliceEvent> Events { get; private set; } = Channel.CreateUnbounded<EndpointSliceEvent>();

    public Task<EndpointSliceSnapshot> ListAsync(string ns, string service, CancellationToken cancellationToken)
    {
        var n = Interlocked.Increment(ref _lists);
        return Task.FromResult(OnList(n));
    }

    public async IAsyncEnumerable<EndpointSliceEvent> WatchAsync(string ns, string service, string resourceVersion, TimeSpan timeout, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var events = Events;
        WatchResourceVersions.Enqueue(resourceVersion);
        Interlocked.Increment(ref _watches);
        try
        {
            await foreach (var change in events.Reader.ReadAllAsync(cancellationToken))
            {
                yield return change;
            }
        }
        finally
        {
            // A stream that ended (closed or failed) is used up: the next watch gets a fresh one. A cancelled watch's
            // stream is kept for the next watch.
            if (events.Reader.Completion.IsCompleted)
            {
                Events = Channel.CreateUnbounded<EndpointSliceEvent>();
            }
        }
    }

    public static EndpointSliceSnapshot Snapshot(string resourceVersion, params V1EndpointSlice[] slices) => new(slices, resourceVersion);
}
