using System.Diagnostics;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// The age, idleness and graceful close of one connection: starts the graceful close (GOAWAY) at its age or after
/// its idle time, fires <see cref="ConnectionClosing"/>, and aborts the connection when the grace ends. A graceful
/// close that Kestrel starts itself (at server shutdown, or asked by the application's code) fires
/// <see cref="ConnectionClosing"/> too, and changes nothing else.
/// </summary>
/// <remarks>
/// Thread safety: timer callbacks (thread pool), Kestrel's close request (its shutdown thread), calls starting and
/// ending (request threads) and the end of the connection race with each other. Every read and write of the mutable
/// fields happens under <see cref="_gate"/>, and each decision is taken in the same lock section as the state change it leads to (a close decided on an idle
/// connection is recorded before any call can start; once <see cref="Ended"/> ran, no close or abort starts). The side
/// effects that run foreign code (cancelling the token, RequestClose, Abort, logging, metrics, the grace timer) run
/// outside it, after the state change that makes them happen exactly once. The lock is per connection, so it is only
/// contended by the calls of that one connection.
/// </remarks>
[System.Diagnostics.CodeAnalysis.SuppressMessage(
    "Design",
    "CA1001:Types that own disposable fields should be disposable",
    Justification = "The closing token source owns no timer or wait handle; handlers may use its token after the connection ended.")]
internal sealed class ConnectionAgeTracker : IConnectionClosingFeature, IConnectionCallCounter
{
    private readonly Lock _gate = new();
    private readonly ConnectionContext _connection;
    private readonly IConnectionLifetimeNotificationFeature _lifetime;
    private readonly ConnectionAgeSettings _settings;
    private readonly TimeSpan _maxAge;
    private readonly TimeProvider _time;
    private readonly ServerConnectionAgeMetrics _metrics;
    private readonly ILogger _logger;
    private readonly HostStopping _hostStopping;
    private readonly long _openedAt;

    // Never disposed: it owns no timer or wait handle, and handlers may still hold its token after the connection ended.
    private readonly CancellationTokenSource _closing = new();
    private readonly CancellationToken _closingToken;

    private ITimer? _ageTimer;
    private ITimer? _idleTimer;
    private ITimer? _graceTimer;
    private ITimer? _stuckTimer;
    private CancellationTokenRegistration _closeRequestedByOthers;
    private CancellationTokenRegistration _hostStoppingRegistration;
    private int _activeCalls;
    private bool _hadCall;
    private bool _agedBeforeFirstCall;
    private long _idleSince;
    private CloseReason _reason;
    private bool _closingFired;
    private bool _closedAtShutdown;

    // What GracePeriod reports, as times since the connection opened: when the closing token fired, and the earliest
    // end of the calls in force (null: none, they are never cut). Ends only move earlier: every close that starts later
    // (this package's own, Kestrel's at shutdown, the host's shutdown itself) can only add an end, never lift one.
    private TimeSpan _firedAt;
    private TimeSpan? _endAt;

    // When the host's shutdown timeout ends (ApplicationStopping plus HostOptions.ShutdownTimeout), once the host began
    // to stop; Kestrel aborts whatever still runs then.
    private TimeSpan? _shutdownEndsAt;

    // How long the calls get from the start of this package's own close before the abort: the grace, or the age plus
    // the grace for a close put off to the first call. Fixed when the close is recorded; logged when it ends.
    private TimeSpan _closeGrace;
    private bool _graceEnded;
    private bool _aborted;
    private bool _ended;

    public ConnectionAgeTracker(
        ConnectionContext connection,
        IConnectionLifetimeNotificationFeature lifetime,
        ConnectionAgeSettings settings,
        TimeSpan maxAge,
        TimeProvider time,
        ServerConnectionAgeMetrics metrics,
        ILogger logger,
        HostStopping? hostStopping = null)
    {
        _connection = connection;
        _lifetime = lifetime;
        _settings = settings;
        _maxAge = maxAge;
        _time = time;
        _metrics = metrics;
        _logger = logger;
        _hostStopping = hostStopping ?? HostStopping.None;
        _closingToken = _closing.Token;
        _openedAt = time.GetTimestamp();
        _idleSince = _openedAt;
    }

    public CancellationToken ConnectionClosing => _closingToken;

    /// <summary>
    /// Before the token fired, <see cref="ConnectionAgeSettings.Grace"/>. Once it fired, the time from then to the
    /// earliest end in force, computed at each read: the end of this package's grace (the age plus the grace for a
    /// close put off to the first call), the end of the host's shutdown timeout once the host began to stop, or none
    /// (infinite: Kestrel never cuts the calls of a connection it was asked to close by the application), whichever
    /// of those closes fired the token and whichever came later.
    /// </summary>
    public TimeSpan GracePeriod
    {
        get
        {
            lock (_gate)
            {
                if (!_closingFired)
                {
                    return _settings.Grace;
                }

                // An end already past when the token fired (the shutdown timeout ended first) leaves nothing.
                return _endAt is { } endAt ? (endAt > _firedAt ? endAt - _firedAt : TimeSpan.Zero) : Timeout.InfiniteTimeSpan;
            }
        }
    }

    /// <summary>The reason of the graceful close this package started, or <see cref="CloseReason.None"/>.</summary>
    public CloseReason Reason
    {
        get
        {
            lock (_gate)
            {
                return _reason;
            }
        }
    }

    /// <summary>
    /// Test seam: runs outside the lock once a close has been decided (and recorded), before it is carried out; lets
    /// a test start a call or end the connection at that exact point.
    /// </summary>
    internal Action? CloseDecided { get; set; }

    /// <summary>Starts the age and idle timers.</summary>
    public void Start()
    {
        lock (_gate)
        {
            // A timer created under the lock can fire before the field is assigned; its callback then waits for
            // the lock, and finds the field set.
            if (_maxAge != Timeout.InfiniteTimeSpan)
            {
                _ageTimer = _time.CreateTimer(static s => ((ConnectionAgeTracker)s!).OnMaxAge(), this, _maxAge, Timeout.InfiniteTimeSpan);
            }

            if (_settings.MaxIdle != Timeout.InfiniteTimeSpan)
            {
                _idleTimer = _time.CreateTimer(static s => ((ConnectionAgeTracker)s!).OnIdleTimer(), this, _settings.MaxIdle, Timeout.InfiniteTimeSpan);
            }
        }

        // The host's shutdown sets an end for every call (Kestrel aborts them when its timeout ends), also for a
        // connection whose token already fired by its age: Kestrel's later close request at shutdown is not seen then
        // (its token was cancelled by this tracker's own close). First, so that a close seen at once below knows it.
        // Registered outside the lock, as the next one.
        _hostStoppingRegistration = _hostStopping.ApplicationStopping.UnsafeRegister(
            static s => ((ConnectionAgeTracker)s!).OnHostStopping(), this);

        // Kestrel's shutdown closes every connection with RequestClose, which cancels this token (and sends the
        // GOAWAY), as does this tracker's own close (then the close is already recorded and nothing more happens).
        // Registered outside the lock: a token already cancelled runs the callback at once, on this thread.
        _closeRequestedByOthers = _lifetime.ConnectionClosedRequested.UnsafeRegister(
            static s => ((ConnectionAgeTracker)s!).OnCloseRequested(), this);
    }

    public void CallStarted()
    {
        bool closeNow;
        bool abortNow;
        int activeCalls;
        CloseReason reason;
        TimeSpan grace;
        lock (_gate)
        {
            // The idle timer is left running: when it fires it sees the call and does nothing; the end of the
            // last call re-arms it.
            _activeCalls++;

            // The connection reached its age before its first call: close it now, while this call runs. Kestrel then
            // sends a GOAWAY that still admits streams in flight, and this call completes normally.
            // Closed at its age, the connection would have carried no call, and this first call would have run on a
            // new connection, for that one's age and grace: it gets as long here. The grace alone (0, say) would cut it
            // at once.
            closeNow = _agedBeforeFirstCall && !_hadCall && TryStartCloseLocked(
                CloseReason.MaxAge,
                _settings.Grace == Timeout.InfiniteTimeSpan ? Timeout.InfiniteTimeSpan : _maxAge + _settings.Grace);
            _hadCall = true;

            // The grace ended while no call ran (see OnGraceEnded): a call starting now has outlived it.
            abortNow = _graceEnded && !_aborted && !_ended;
            _aborted |= abortNow;
            activeCalls = _activeCalls;
            reason = _reason;
            grace = _closeGrace;
        }

        if (closeNow)
        {
            CarryOutClose(CloseReason.MaxAge);
        }

        if (abortNow)
        {
            CarryOutAbort(activeCalls, reason, grace);
        }
    }

    public void CallEnded()
    {
        lock (_gate)
        {
            _activeCalls--;
            if (_activeCalls == 0 && _idleTimer is not null && _reason == CloseReason.None && !_ended)
            {
                _idleSince = _time.GetTimestamp();
                _idleTimer.Change(_settings.MaxIdle, Timeout.InfiniteTimeSpan);
            }
        }
    }

    /// <summary>
    /// The connection ended (for whatever reason): stops the timers; from here on no graceful close or abort starts.
    /// Then call <see cref="RecordAge"/>.
    /// </summary>
    /// <returns>
    /// Whether this package did not abort the connection (its grace did not end): then, on HTTP/2, the socket may
    /// linger (see <see cref="ServerConnectionAgeMiddleware"/>), whoever closed the connection, unless Kestrel's
    /// GOAWAY carried an error code; the tracker need not have seen the close (Kestrel's keep-alive timeout and
    /// protocol errors do not go through <see cref="IConnectionLifetimeNotificationFeature"/>). Decided in the same
    /// step that ends the connection, so that no grace timer can abort it afterwards.
    /// </returns>
    public bool Ended()
    {
        bool notAborted;
        lock (_gate)
        {
            _ended = true;
            DisposeTimers();
            notAborted = !_aborted;
        }

        // Unregister, not Dispose: it does not wait for a callback running on another thread (which finds _ended).
        _closeRequestedByOthers.Unregister();
        _hostStoppingRegistration.Unregister();
        return notAborted;
    }

    /// <summary>Records the age of the connection, once, after <see cref="Ended"/>.</summary>
    public void RecordAge()
    {
        CloseReason reason;
        lock (_gate)
        {
            // This package's own close first: it is what the connection's age was limited by.
            reason = _reason != CloseReason.None ? _reason : _closedAtShutdown ? CloseReason.Shutdown : CloseReason.None;
        }

        _metrics.Ended(reason, _time.GetElapsedTime(_openedAt));
    }

    private void OnMaxAge()
    {
        lock (_gate)
        {
            // A connection that never carried a call (a client's pre-connected spare socket, or one still in its
            // HTTP/2 handshake) is not closed yet: before it has read the client's preface, Kestrel closes with a
            // GOAWAY in place of its SETTINGS (the server's side of the handshake), so a client that starts using the
            // connection at that moment fails its handshake and the call. It is closed when its first call starts
            // instead.
            if (_settings.CallsCounted && !_hadCall)
            {
                _agedBeforeFirstCall = true;
                return;
            }

            if (!TryStartCloseLocked(CloseReason.MaxAge, _settings.Grace))
            {
                return;
            }
        }

        CarryOutClose(CloseReason.MaxAge);
    }

    private void OnIdleTimer()
    {
        lock (_gate)
        {
            if (_reason != CloseReason.None || _ended || _activeCalls > 0)
            {
                return;
            }

            // A callback that was already on its way when a call started and ended again is early: wait the rest.
            var idleFor = _time.GetElapsedTime(_idleSince);
            if (idleFor < _settings.MaxIdle)
            {
                _idleTimer?.Change(_settings.MaxIdle - idleFor, Timeout.InfiniteTimeSpan);
                return;
            }

            // Recorded before the lock is released: a call that starts from now on finds the connection closing.
            if (!TryStartCloseLocked(CloseReason.MaxIdle, _settings.Grace))
            {
                return;
            }
        }

        CarryOutClose(CloseReason.MaxIdle);
    }

    /// <summary>
    /// Kestrel was asked to close the connection gracefully (it sends the GOAWAY): by this tracker (nothing more to do),
    /// by Kestrel's shutdown, or by the application's own code (<c>HttpContext.Connection.RequestClose()</c>). Fires
    /// the closing token so that long streams can end before Kestrel cuts them. Nothing else changes: no grace timer
    /// (Kestrel aborts what still runs at the end of the host's shutdown timeout, and never otherwise), and the age and
    /// idle timers keep running, so the package's own limits still apply.
    /// </summary>
    private void OnCloseRequested()
    {
        var stopping = _hostStopping.ApplicationStopping.IsCancellationRequested;
        lock (_gate)
        {
            if (_closingFired || _ended)
            {
                return;
            }

            _closingFired = true;
            _firedAt = _time.GetElapsedTime(_openedAt);
            _closedAtShutdown = stopping;

            // At shutdown Kestrel aborts what still runs when the host's shutdown timeout ends: reported as the whole
            // timeout from now (documented as an upper bound, as the shutdown began a little earlier); otherwise Kestrel
            // never cuts the calls.
            _endAt = stopping ? Later(_firedAt, _hostStopping.ShutdownTimeout) : null;
        }

        var age = _time.GetElapsedTime(_openedAt);
        ServerConnectionAgeLog.ClosingRequestedByKestrel(_logger, _connection.ConnectionId, age, stopping);

        // On the thread pool: at shutdown this runs inside Kestrel's loop over every connection, and the token's
        // callbacks are handlers' code (continuations of awaits on a linked token may run inline).
        ThreadPool.UnsafeQueueUserWorkItem(static tracker => tracker.FireClosing(), this, preferLocal: false);
    }

    /// <summary>
    /// The host began to stop: Kestrel aborts every call that still runs when its shutdown timeout ends. A token that
    /// fired already (by age, idleness or the application's own close) must report that end if it comes first; a token
    /// that fires later reads it.
    /// </summary>
    private void OnHostStopping()
    {
        lock (_gate)
        {
            if (_ended)
            {
                return;
            }

            _shutdownEndsAt = Later(_time.GetElapsedTime(_openedAt), _hostStopping.ShutdownTimeout);
            if (_closingFired)
            {
                EndNoLaterThanLocked(_shutdownEndsAt);
            }
        }
    }

    /// <summary>Under <see cref="_gate"/>: <paramref name="end"/> becomes the end in force if it comes first.</summary>
    private void EndNoLaterThanLocked(TimeSpan? end)
    {
        Debug.Assert(_gate.IsHeldByCurrentThread, "called under the lock");
        if (end is { } at && (_endAt is not { } current || at < current))
        {
            _endAt = at;
        }
    }

    /// <summary><paramref name="from"/> plus <paramref name="duration"/>; null (never) for an infinite or unrepresentable one.</summary>
    private static TimeSpan? Later(TimeSpan from, TimeSpan duration) =>
        duration == Timeout.InfiniteTimeSpan || duration < TimeSpan.Zero || duration > TimeSpan.MaxValue - from ? null : from + duration;

    private void FireClosing()
    {
        try
        {
            _closing.Cancel();
        }
        catch (AggregateException ex)
        {
            ServerConnectionAgeLog.ClosingCallbackFailed(_logger, _connection.ConnectionId, ex);
        }
    }

    /// <summary>
    /// Under <see cref="_gate"/>: records that the graceful close starts, unless one already started or the
    /// connection ended; the caller then runs <see cref="CarryOutClose"/> outside the lock.
    /// </summary>
    /// <param name="reason">Why.</param>
    /// <param name="grace">How long the calls get from now before the abort.</param>
    private bool TryStartCloseLocked(CloseReason reason, TimeSpan grace)
    {
        Debug.Assert(_gate.IsHeldByCurrentThread, "called under the lock");
        if (_reason != CloseReason.None || _ended)
        {
            return false;
        }

        _reason = reason;
        _closeGrace = grace;

        // Set before the token fires, so that its callbacks read it. When the token fired already (Kestrel started
        // closing: at shutdown, or asked by the application), the calls run until the earlier of the ends in force.
        var now = _time.GetElapsedTime(_openedAt);
        if (!_closingFired)
        {
            _closingFired = true;
            _firedAt = now;
            _endAt = _shutdownEndsAt;
        }

        EndNoLaterThanLocked(Later(now, grace));

        _ageTimer?.Dispose();
        _ageTimer = null;
        _idleTimer?.Dispose();
        _idleTimer = null;
        return true;
    }

    /// <summary>The side effects of a close that <see cref="TryStartCloseLocked"/> recorded; outside the lock.</summary>
    /// <param name="reason">Why.</param>
    private void CarryOutClose(CloseReason reason)
    {
        CloseDecided?.Invoke();
        var age = _time.GetElapsedTime(_openedAt);
        if (reason == CloseReason.MaxAge)
        {
            ServerConnectionAgeLog.ClosingByAge(_logger, _connection.ConnectionId, _maxAge, age);
        }
        else
        {
            ServerConnectionAgeLog.ClosingByIdle(_logger, _connection.ConnectionId, _settings.MaxIdle, age);
        }

        _metrics.CloseStarted(reason);

        // GOAWAY first, so that clients move new calls to a new connection as early as possible; then the token,
        // whose callbacks are handlers' code.
        _lifetime.RequestClose();
        FireClosing();

        if (_settings.Grace == Timeout.InfiniteTimeSpan)
        {
            return;
        }

        TimeSpan grace;
        lock (_gate)
        {
            grace = _closeGrace;
        }

        // Created outside the lock: with a zero grace the callback may run at once, on this thread.
        var graceTimer = _time.CreateTimer(static s => ((ConnectionAgeTracker)s!).OnGraceEnded(), this, grace, Timeout.InfiniteTimeSpan);
        lock (_gate)
        {
            if (_ended || _aborted)
            {
                graceTimer.Dispose();
            }
            else
            {
                _graceTimer = graceTimer;
            }
        }
    }

    private void OnGraceEnded()
    {
        bool abort;
        int activeCalls;
        CloseReason reason;
        TimeSpan grace;
        lock (_gate)
        {
            if (_ended || _aborted)
            {
                return;
            }

            // No call runs, so there is nothing to cut: Kestrel ends the connection by itself, within milliseconds,
            // after its GOAWAY (and the socket may linger, as for any close while no call runs). An abort now (a zero
            // grace) would cut the GOAWAY short and reset the socket under a client that just picked the connection.
            // A call that still starts is cut then (CallStarted); a connection still open after MaxGoAwayLinger is
            // stuck (a finished call's response that the client does not read) and is aborted then.
            abort = !_settings.CallsCounted || _activeCalls > 0 || _graceEnded;
            _graceEnded = true;
            _aborted = abort;
            activeCalls = _activeCalls;
            reason = _reason;
            grace = _closeGrace;
        }

        if (!abort)
        {
            // Created outside the lock, as the grace timer (a callback may run at once).
            var stuckTimer = _time.CreateTimer(
                static s => ((ConnectionAgeTracker)s!).OnGraceEnded(), this, ServerConnectionAgeDefaults.MaxGoAwayLinger, Timeout.InfiniteTimeSpan);
            lock (_gate)
            {
                if (_ended || _aborted)
                {
                    stuckTimer.Dispose();
                }
                else
                {
                    _stuckTimer = stuckTimer;
                }
            }

            return;
        }

        CarryOutAbort(activeCalls, reason, grace);
    }

    /// <summary>The side effects of an abort recorded under <see cref="_gate"/>; outside the lock.</summary>
    /// <param name="activeCalls">The calls running.</param>
    /// <param name="reason">Why the connection was closed.</param>
    /// <param name="grace">The time the calls got since the close started (<see cref="_closeGrace"/>), not the setting alone.</param>
    private void CarryOutAbort(int activeCalls, CloseReason reason, TimeSpan grace)
    {
        if (_settings.CallsCounted)
        {
            ServerConnectionAgeLog.GraceExpired(_logger, _connection.ConnectionId, activeCalls, grace);
        }
        else
        {
            // Nothing counts the calls: a count of 0 would be a false statement about a connection still in use.
            ServerConnectionAgeLog.GraceExpiredCallsNotCounted(_logger, _connection.ConnectionId, grace);
        }

        _metrics.Aborted(reason);
        _connection.Abort(new ConnectionAbortedException(
            $"The connection was aborted because calls still ran when its grace period ({grace}) ended."));
    }

    private void DisposeTimers()
    {
        _ageTimer?.Dispose();
        _ageTimer = null;
        _idleTimer?.Dispose();
        _idleTimer = null;
        _graceTimer?.Dispose();
        _graceTimer = null;
        _stuckTimer?.Dispose();
        _stuckTimer = null;
    }
}
