namespace ConnectionRefresh.Internal;

/// <summary>
/// One SocketsHttpHandler of a slot (in practice one HTTP/2 connection) from its first call until its last
/// call has ended after retirement. Calls hold a lease; the slot holds one lease until it retires the
/// generation; the handler is disposed when the last lease is released, never earlier.
/// </summary>
/// <remarks>
/// Thread-safe without locks: <see cref="_leases"/> only moves through compare-and-swap and can never come back
/// from zero, so no call can start on a handler that is being disposed; <see cref="_retired"/>,
/// <see cref="_failureReported"/> and <see cref="_http11RequiredReported"/> are each set once.
/// </remarks>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "Disposed by the release of its last lease, not by an owner.")]
internal sealed class HandlerGeneration
{
    private readonly GenerationHandler _handler;
    private readonly long _retireAtTimestamp;
    private readonly int _maxRequests;
    private readonly ConnectionRefreshTelemetry _telemetry;
    private readonly TimeSpan _drainTimeout;
    private readonly TimeProvider _timeProvider;
    private readonly CancellationTokenSource? _cut;

    // Taken once: the token stays readable after its source is disposed with the last lease (Token would throw then).
    private readonly CancellationToken _cutToken;
    private ITimer? _drainTimer;
    private int _leases = 1;
    private int _requests;
    private int _retired;
    private int _failureReported;
    private int _http11RequiredReported;

    public HandlerGeneration(
        HttpMessageHandler handler,
        long retireAtTimestamp,
        int maxRequests,
        TimeSpan drainTimeout,
        TimeProvider timeProvider,
        ConnectionRefreshTelemetry telemetry)
    {
        _handler = new GenerationHandler(handler);
        _retireAtTimestamp = retireAtTimestamp;
        _maxRequests = maxRequests;
        _drainTimeout = drainTimeout;
        _timeProvider = timeProvider;
        _telemetry = telemetry;
        _cut = drainTimeout == Timeout.InfiniteTimeSpan ? null : new CancellationTokenSource();
        _cutToken = _cut?.Token ?? CancellationToken.None;
    }

    /// <summary>Fires when <see cref="ConnectionRefreshOptions.DrainTimeout"/> cuts the calls still running.</summary>
    public CancellationToken CutToken => _cutToken;

    public bool IsRetired => Volatile.Read(ref _retired) != 0;

    public bool IsDisposed => Volatile.Read(ref _leases) == 0;

    /// <summary>Calls running on this generation now: every lease but the slot's own.</summary>
    public int ActiveCalls => Volatile.Read(ref _leases) - (IsRetired ? 0 : 1);

    /// <summary>Number of calls started on this generation.</summary>
    public int Requests => Volatile.Read(ref _requests);

    /// <summary>
    /// Takes a lease for a new call. Returns what the slot must do: use it, or retire it and look again.
    /// A call that gets <see cref="StartResult.UseAndRetire"/> is the last one this generation takes.
    /// </summary>
    public StartResult TryStart(long nowTimestamp)
    {
        if (!TryAddLease())
        {
            return StartResult.Gone;
        }

        if (IsRetired)
        {
            Release();
            return StartResult.Gone;
        }

        if (nowTimestamp >= _retireAtTimestamp)
        {
            Release();
            return StartResult.RetireByAge;
        }

        if (_maxRequests != int.MaxValue)
        {
            var count = Interlocked.Increment(ref _requests);
            if (count > _maxRequests)
            {
                Release();
                return StartResult.RetireByRequests;
            }

            return count == _maxRequests ? StartResult.UseAndRetire : StartResult.Use;
        }

        return StartResult.Use;
    }

    /// <summary>
    /// True for the first failure of this generation's connection: every call running on a lost connection fails with
    /// it, but the loss is reported (logged) once.
    /// </summary>
    public bool TryReportFailure() => Interlocked.Exchange(ref _failureReported, 1) == 0;

    /// <summary>True the first time this generation's server answered HTTP_1_1_REQUIRED: logged once, not per call.</summary>
    public bool TryReportHttp11Required() => Interlocked.Exchange(ref _http11RequiredReported, 1) == 0;

    public Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        => _handler.ForwardAsync(request, cancellationToken);

    public HttpResponseMessage Send(HttpRequestMessage request, CancellationToken cancellationToken)
        => _handler.Forward(request, cancellationToken);

    /// <summary>Retires once: no new calls; the slot's lease is released so the last call disposes the handler.</summary>
    public bool Retire(RetirementReason reason)
    {
        if (Interlocked.Exchange(ref _retired, 1) != 0)
        {
            return false;
        }

        _telemetry.Retired(reason);
        if (_cut is not null)
        {
            _drainTimer = _timeProvider.CreateTimer(static s => ((HandlerGeneration)s!).CutRunningCalls(), this, _drainTimeout, Timeout.InfiniteTimeSpan);
        }

        Release();
        return true;
    }

    public void Release()
    {
        if (Interlocked.Decrement(ref _leases) == 0)
        {
            _drainTimer?.Dispose();
            _handler.Dispose();
            _cut?.Dispose();
            _telemetry.Closed();
        }
    }

    private bool TryAddLease()
    {
        var leases = Volatile.Read(ref _leases);
        while (leases > 0)
        {
            var seen = Interlocked.CompareExchange(ref _leases, leases + 1, leases);
            if (seen == leases)
            {
                return true;
            }

            leases = seen;
        }

        return false;
    }

    private void CutRunningCalls()
    {
        // Holding a lease keeps the token source alive while it is cancelled.
        if (!TryAddLease())
        {
            return;
        }

        try
        {
            _telemetry.DrainCut();
            _cut!.Cancel();
        }
        catch (AggregateException exception)
        {
            // A timer callback must not throw: that would end the process. The calls are cut either way.
            _telemetry.DrainCutFailed(exception);
        }
        finally
        {
            Release();
        }
    }
}

internal enum StartResult
{
    Use,
    UseAndRetire,
    RetireByAge,
    RetireByRequests,
    Gone,
}
