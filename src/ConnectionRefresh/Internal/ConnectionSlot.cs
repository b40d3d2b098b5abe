namespace ConnectionRefresh.Internal;

/// <summary>
/// One of the K connections of a client: the current generation, replaced when it retires.
/// </summary>
/// <remarks>
/// The hot path reads <see cref="_current"/> without a lock; replacing it takes <see cref="_gate"/>, which is
/// rare (once per age or request budget). A generation is always unpublished before it is retired, so a call
/// that finds its generation retired finds a newer one (or none, and creates it) when it looks again. The failure
/// penalty's deadline is one volatile field: a stale read only makes one slot choice less good.
/// </remarks>
internal sealed class ConnectionSlot
{
    private readonly GenerationFactory _factory;
    private readonly int _index;
    private readonly Lock _gate = new();
    private HandlerGeneration? _current;
    private long _penaltyUntil; // TimeProvider timestamp; 0 while the slot's connections have not failed
    private bool _started;
    private bool _disposed;

    public ConnectionSlot(GenerationFactory factory, int index)
    {
        _factory = factory;
        _index = index;
    }

    /// <summary>Metrics and logs of the client this slot belongs to.</summary>
    public ConnectionRefreshTelemetry Telemetry => _factory.Telemetry;

    /// <summary>The generation taking new calls now, if any (for tests and diagnostics).</summary>
    public HandlerGeneration? Current => Volatile.Read(ref _current);

    /// <summary>Calls running on the current generation.</summary>
    public int ActiveCalls => Volatile.Read(ref _current)?.ActiveCalls ?? 0;

    /// <summary>
    /// How busy the slot looks to the slot choice: its running calls, or <see cref="int.MaxValue"/> for
    /// <see cref="ConnectionRefreshDefaults.FailedSlotPenalty"/> after its connection failed.
    /// </summary>
    public int Load
    {
        get
        {
            var penaltyUntil = Volatile.Read(ref _penaltyUntil);
            return penaltyUntil != 0 && _factory.TimeProvider.GetTimestamp() < penaltyUntil ? int.MaxValue : ActiveCalls;
        }
    }

    /// <summary>Starts a call: returns a generation on which the caller holds a lease.</summary>
    public HandlerGeneration Start()
    {
        while (true)
        {
            var generation = Volatile.Read(ref _current) ?? Publish();
            switch (generation.TryStart(_factory.TimeProvider.GetTimestamp()))
            {
                case StartResult.Use:
                    return generation;
                case StartResult.UseAndRetire:
                    Retire(generation, RetirementReason.RequestCount);
                    return generation;
                case StartResult.RetireByAge:
                    Retire(generation, RetirementReason.Age);
                    break;
                case StartResult.RetireByRequests:
                    Retire(generation, RetirementReason.RequestCount);
                    break;
                default:
                    break; // Retired by another call meanwhile: look again.
            }
        }
    }

    /// <summary>
    /// Unpublishes and retires <paramref name="generation"/> unless that already happened; a connection failure of the
    /// generation taking new calls also makes the slot look busy for a moment (see <see cref="Load"/>).
    /// </summary>
    public void Retire(HandlerGeneration generation, RetirementReason reason)
    {
        lock (_gate)
        {
            if (!ReferenceEquals(_current, generation))
            {
                // Retired already: a draining connection that fails says nothing about the slot's newer one.
                return;
            }

            _current = null;
        }

        if (reason == RetirementReason.ConnectionFailure)
        {
            var time = _factory.TimeProvider;
            Volatile.Write(ref _penaltyUntil, time.GetTimestamp() + (long)(ConnectionRefreshDefaults.FailedSlotPenalty.TotalSeconds * time.TimestampFrequency));
        }

        generation.Retire(reason);
    }

    public void Dispose()
    {
        HandlerGeneration? generation;
        lock (_gate)
        {
            _disposed = true;
            generation = _current;
            _current = null;
        }

        generation?.Retire(RetirementReason.Disposed);
    }

    private HandlerGeneration Publish()
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_current is null)
            {
                _current = _factory.Create(_index, firstOfSlot: !_started);
                _started = true;
            }

            return _current;
        }
    }
}
