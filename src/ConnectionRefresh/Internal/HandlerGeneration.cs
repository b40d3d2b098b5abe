namespace ConnectionRefresh.Internal;

/// <summary>
/// One SocketsHttpHandler of a slot (in practice one HTTP/2 connection) from its first call until its last
/// call has ended after retirement. Calls hold a lease; the slot holds one lease until it retires the
/// generation; the handler is disposed when the last lease is released, never earlier.
/// </summary>
/// <remarks>
/// <para>
/// The age and request budget count from the generation's oldest open TCP connection, once it has had one: when
/// the server closes a connection gracefully (GOAWAY: its max connection age, a shutdown), SocketsHttpHandler dials a
/// new one by itself, which would otherwise inherit what was left of the old one's age and budget and be refreshed
/// early. The connections are known from the connect callback (<see cref="ConnectionOpened"/>) and the disposal of
/// their streams (<see cref="ConnectionClosed"/>); a new connection while an older one is open (HTTP/1.1, past the
/// stream limit) changes nothing, so no connection ever outlives its own age or budget.
/// </para>
/// <para>
/// Thread-safe: <see cref="_leases"/> only moves through compare-and-swap and can never come back
/// from zero, so no call can start on a handler that is being disposed; <see cref="_retired"/>,
/// <see cref="_failureReported"/> and <see cref="_http11RequiredReported"/> are each set once. The call path reads the
/// deadlines without a lock; they only move forward, under <see cref="_connectionsGate"/> (taken when a connection opens
/// or closes), and a call that reads a stale one at worst retires the generation a little early.
/// </para>
/// </remarks>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "Disposed by the release of its last lease, not by an owner.")]
internal sealed class HandlerGeneration
{
    private readonly GenerationHandler _handler;
    private readonly GenerationFactory _factory;
    private readonly ConnectionRefreshTelemetry _telemetry;
    private readonly TimeSpan _drainTimeout;
    private readonly TimeProvider _timeProvider;
    private readonly CancellationTokenSource? _cut;

    // Taken once: the token stays readable after its source is disposed with the last lease (Token would throw then).
    private readonly CancellationToken _cutToken;
    private readonly Lock _connectionsGate = new();
    private readonly List<OpenConnection> _connections = []; // open TCP connections, oldest first
    private bool _hadConnection;
    private long _retireAtTimestamp;
    private long _lastRequest; // the request that spends the budget; long.MaxValue without one
    private ITimer? _drainTimer;
    private int _leases = 1;
    private long _requests;
    private int _retired;
    private int _failureReported;
    private int _http11RequiredReported;

    /// <param name="createHandler">Creates the handler; it reports its connections to the generation it is given.</param>
    /// <param name="factory">Draws a fresh age and budget when a newer connection takes the place of the oldest.</param>
    /// <param name="age">This generation's age in <paramref name="timeProvider"/> ticks; <see cref="long.MaxValue"/>: none.</param>
    /// <param name="requestBudget">Calls this generation takes; <see cref="long.MaxValue"/>: no limit.</param>
    /// <param name="drainTimeout">Longest time calls may run once it retired; infinite: no limit.</param>
    /// <param name="timeProvider">The clock of ages and drain timeouts.</param>
    /// <param name="telemetry">Metrics and logs of the client.</param>
    public HandlerGeneration(
        Func<HandlerGeneration, HttpMessageHandler> createHandler,
        GenerationFactory factory,
        long age,
        long requestBudget,
        TimeSpan drainTimeout,
        TimeProvider timeProvider,
        ConnectionRefreshTelemetry telemetry)
    {
        _factory = factory;
        _retireAtTimestamp = Deadline(timeProvider.GetTimestamp(), age);
        _lastRequest = requestBudget;
        _drainTimeout = drainTimeout;
        _timeProvider = timeProvider;
        _telemetry = telemetry;
        _cut = drainTimeout == Timeout.InfiniteTimeSpan ? null : new CancellationTokenSource();
        _cutToken = _cut?.Token ?? CancellationToken.None;

        // Last: the handler calls back (ConnectionOpened) only once a call runs, on a fully built generation.
        _handler = new GenerationHandler(createHandler(this));
    }

    /// <summary>Fires when <see cref="ConnectionRefreshOptions.DrainTimeout"/> cuts the calls still running.</summary>
    public CancellationToken CutToken => _cutToken;

    public bool IsRetired => Volatile.Read(ref _retired) != 0;

    public bool IsDisposed => Volatile.Read(ref _leases) == 0;

    /// <summary>Calls running on this generation now: every lease but the slot's own.</summary>
    public int ActiveCalls => Volatile.Read(ref _leases) - (IsRetired ? 0 : 1);

    /// <summary>Number of calls started on this generation (counted only under a request budget).</summary>
    public long Requests => Volatile.Read(ref _requests);

    /// <summary>TCP connections of this generation's handler open now (those made by its own connect callback).</summary>
    public int OpenConnections
    {
        get
        {
            lock (_connectionsGate)
            {
                return _connections.Count;
            }
        }
    }

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

        if (nowTimestamp >= Volatile.Read(ref _retireAtTimestamp))
        {
            Release();
            return StartResult.RetireByAge;
        }

        var lastRequest = Volatile.Read(ref _lastRequest);
        if (lastRequest != long.MaxValue)
        {
            var count = Interlocked.Increment(ref _requests);
            if (count > lastRequest)
            {
                Release();
                return StartResult.RetireByRequests;
            }

            return count == lastRequest ? StartResult.UseAndRetire : StartResult.Use;
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

    /// <summary>
    /// The handler opened a TCP connection. If it is the only one open and not the generation's first (the server closed
    /// the previous one, or it idled out), the age and request budget restart from it. Returns what
    /// <see cref="ConnectionClosed"/> takes.
    /// </summary>
    public OpenConnection ConnectionOpened()
    {
        // Calls already running may still be waiting for this connection: they count against its budget.
        var connection = new OpenConnection(_timeProvider.GetTimestamp(), Math.Max(0, Requests - ActiveCalls));
        bool restarted;
        lock (_connectionsGate)
        {
            _connections.Add(connection);
            restarted = _hadConnection && _connections.Count == 1 && RestartFrom(connection);
            _hadConnection = true;
        }

        if (restarted)
        {
            _telemetry.AgeRestarted();
        }

        return connection;
    }

    /// <summary>A connection's stream was disposed: the connection is closed. When it was the oldest, the next one's age counts.</summary>
    public void ConnectionClosed(OpenConnection connection)
    {
        bool restarted;
        lock (_connectionsGate)
        {
            var index = _connections.IndexOf(connection);
            if (index < 0)
            {
                return;
            }

            _connections.RemoveAt(index);
            restarted = index == 0 && _connections.Count > 0 && RestartFrom(_connections[0]);
        }

        if (restarted)
        {
            _telemetry.AgeRestarted();
        }
    }

    // Under _connectionsGate. A retired generation takes no more calls: nothing to move.
    private bool RestartFrom(OpenConnection oldest)
    {
        if (IsRetired)
        {
            return false;
        }

        // A full, freshly jittered age and budget, as a new generation would get (the first one's stagger is spent).
        var (age, budget) = _factory.NextLifetime();
        Volatile.Write(ref _retireAtTimestamp, Math.Max(Volatile.Read(ref _retireAtTimestamp), Deadline(oldest.OpenedAt, age)));
        if (budget != long.MaxValue)
        {
            Volatile.Write(ref _lastRequest, Math.Max(Volatile.Read(ref _lastRequest), oldest.RequestsBefore + budget));
        }

        return true;
    }

    private static long Deadline(long from, long age) => age == long.MaxValue ? long.MaxValue : from + age;

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

/// <summary>
/// An open TCP connection of a generation: when it opened, and how many of the generation's calls had ended or were on
/// their way before it (none of which it can carry). Compared by reference.
/// </summary>
internal sealed class OpenConnection(long openedAt, long requestsBefore)
{
    public long OpenedAt { get; } = openedAt;

    public long RequestsBefore { get; } = requestsBefore;
}

internal enum StartResult
{
    Use,
    UseAndRetire,
    RetireByAge,
    RetireByRequests,
    Gone,
}
