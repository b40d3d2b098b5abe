using ConnectionRefresh.Kubernetes.Internal;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>
/// A LIST the test holds in flight, to act while the resolver's loop waits for the API server: use <see cref="Answer"/> as
/// <see cref="ScriptedEndpointSliceClient.OnList"/>, wait for <see cref="InFlight"/>, then <see cref="Release"/> it. A LIST
/// never released is answered after 30 s, so nothing hangs.
/// </summary>
internal sealed class HeldList(EndpointSliceSnapshot answer) : IDisposable
{
    private readonly ManualResetEventSlim _listing = new();
    private readonly ManualResetEventSlim _released = new();

    /// <summary>Whether a LIST has started.</summary>
    public bool InFlight => _listing.IsSet;

    /// <summary>The LIST: signals that it runs, blocks until released, then answers.</summary>
    public EndpointSliceSnapshot Answer(int listNumber)
    {
        _listing.Set();
        _released.Wait(TimeSpan.FromSeconds(30));
        return answer;
    }

    public void Release() => _released.Set();

    public void Dispose()
    {
        _listing.Dispose();
        _released.Dispose();
    }
}
