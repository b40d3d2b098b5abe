namespace ConnectionRefresh.Internal;

/// <summary>
/// The primary handler of a client: spreads calls over K <see cref="ConnectionSlot"/>s and ties each response to its
/// generation until the response ends, so that retiring a connection never cuts a call. Slots are taken
/// round-robin, but of the slot in turn and the next one the one with fewer calls running wins: a connection to a
/// slow or silently dead pod, where calls pile up, gets few new calls until keepalive or age retires it; a slot whose
/// connection just failed (refused connections fail fast, so it would look idle) counts as busy for a moment.
/// </summary>
/// <remarks>
/// Thread-safe: the slot array is immutable, the cursor moves with Interlocked, and the slots' loads are read
/// without locks (a stale count only makes one choice less good).
/// </remarks>
internal sealed class ConnectionRefreshHandler : HttpMessageHandler
{
    private readonly ConnectionSlot[] _slots;
    private readonly ConnectionRefreshTelemetry _telemetry;
    private int _cursor = -1;

    public ConnectionRefreshHandler(GenerationFactory factory, int connections)
    {
        _telemetry = factory.Telemetry;
        _slots = new ConnectionSlot[connections];
        for (var i = 0; i < connections; i++)
        {
            _slots[i] = new ConnectionSlot(factory, i);
        }
    }

    /// <summary>The slots, for tests and diagnostics.</summary>
    internal IReadOnlyList<ConnectionSlot> Slots => _slots;

    protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        // As SocketsHttpHandler does: a call cancelled before it is sent fails without a connection. Taking a slot
        // first would spend request budget (and create and retire generations, counted and logged) for nothing.
        if (cancellationToken.IsCancellationRequested)
        {
            return Task.FromCanceled<HttpResponseMessage>(cancellationToken);
        }

        var slot = PickSlot();
        return SendAsync(slot, slot.Start(), request, cancellationToken);
    }

    /// <summary>
    /// HttpClient.Send: the same slot, lease and failure handling as <see cref="SendAsync(HttpRequestMessage, CancellationToken)"/>.
    /// SocketsHttpHandler supports it for HTTP/1.1 only and refuses HTTP/2 with a NotSupportedException, passed on as is.
    /// </summary>
    protected override HttpResponseMessage Send(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var slot = PickSlot();
        var generation = slot.Start();
        var linked = Link(generation, cancellationToken);
        HttpResponseMessage response;
        try
        {
            response = generation.Send(request, linked?.Token ?? cancellationToken);
        }
        catch (Exception exception)
        {
            var replacement = Failed(exception, slot, generation, linked, cancellationToken);
            if (replacement is null)
            {
                throw;
            }

            throw replacement;
        }

        return Track(request, response, slot, generation, linked);
    }

    private ConnectionSlot PickSlot()
    {
        if (_slots.Length == 1)
        {
            return _slots[0];
        }

        var turn = (int)((uint)Interlocked.Increment(ref _cursor) % (uint)_slots.Length);
        var slot = _slots[turn];
        var next = _slots[turn + 1 == _slots.Length ? 0 : turn + 1];
        return next.Load < slot.Load ? next : slot;
    }

    private async Task<HttpResponseMessage> SendAsync(
        ConnectionSlot slot, HandlerGeneration generation, HttpRequestMessage request, CancellationToken cancellationToken)
    {
        var linked = Link(generation, cancellationToken);
        HttpResponseMessage response;
        try
        {
            response = await generation.SendAsync(request, linked?.Token ?? cancellationToken).ConfigureAwait(false);
        }
        catch (Exception exception)
        {
            var replacement = Failed(exception, slot, generation, linked, cancellationToken);
            if (replacement is null)
            {
                throw;
            }

            throw replacement;
        }

        return Track(request, response, slot, generation, linked);
    }

    private static CancellationTokenSource? Link(HandlerGeneration generation, CancellationToken cancellationToken)
        => generation.CutToken.CanBeCanceled ? CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, generation.CutToken) : null;

    /// <summary>Ends a call that failed before its response; returns the exception to throw instead, if any.</summary>
    private Exception? Failed(
        Exception exception, ConnectionSlot slot, HandlerGeneration generation, CancellationTokenSource? linked, CancellationToken cancellationToken)
    {
        linked?.Dispose();
        generation.Release();
        return ConnectionFailures.OnCallFailed(exception, slot, generation, _telemetry, beforeResponse: true, cancellationToken);
    }

    /// <summary>Ties the response to its generation until its body ends.</summary>
    private static HttpResponseMessage Track(
        HttpRequestMessage request, HttpResponseMessage response, ConnectionSlot slot, HandlerGeneration generation, CancellationTokenSource? linked)
    {
        // A HEAD response has no body: its stream ended with the headers. HttpClient does not read it and callers often
        // leave it undisposed, so the call ends here rather than hold its connection forever.
        if (request.Method == HttpMethod.Head)
        {
            linked?.Dispose();
            generation.Release();
            return response;
        }

        response.Content = new TrackedContent(response.Content, slot, generation, linked);
        return response;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            // Running calls keep their generations alive; each is disposed after its last call.
            foreach (var slot in _slots)
            {
                slot.Dispose();
            }
        }

        base.Dispose(disposing);
    }
}
