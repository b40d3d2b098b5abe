namespace ConnectionRefresh.Internal;

/// <summary>
/// Creates the generations of every slot of one client: a fresh handler, a jittered retirement time and a
/// request budget. The first generation of slot <c>i</c> of <c>K</c> lives <c>(i + 1) / K</c> of a full age
/// (and budget), which staggers the slots so that at most one of them reconnects per <c>age / K</c>.
/// A generation whose connection the server replaced restarts with a full age and budget (<see cref="NextLifetime"/>).
/// Immutable apart from the injected random source.
/// </summary>
internal sealed class GenerationFactory
{
    private readonly ConnectionRefreshOptions _options;
    private readonly Func<HandlerGeneration, HttpMessageHandler> _createHandler;
    private readonly TimeProvider _timeProvider;
    private readonly ConnectionRefreshTelemetry _telemetry;
    private readonly Func<double> _random;

    public GenerationFactory(
        ConnectionRefreshOptions options,
        Func<HandlerGeneration, HttpMessageHandler> createHandler,
        TimeProvider timeProvider,
        ConnectionRefreshTelemetry telemetry,
        Func<double>? random = null)
    {
        _options = options;
        _createHandler = createHandler;
        _timeProvider = timeProvider;
        _telemetry = telemetry;
        _random = random ?? Random.Shared.NextDouble;
    }

    public TimeProvider TimeProvider => _timeProvider;

    public ConnectionRefreshTelemetry Telemetry => _telemetry;

    public HandlerGeneration Create(int slotIndex, bool firstOfSlot)
    {
        var share = firstOfSlot ? (slotIndex + 1.0) / _options.ConnectionsPerEndpoint : 1.0;
        return new HandlerGeneration(
            _createHandler,
            this,
            Age(share),
            RequestBudget(share),
            _options.DrainTimeout,
            _timeProvider,
            _telemetry);
    }

    /// <summary>A full, freshly jittered age (in timestamp ticks) and request budget; <see cref="long.MaxValue"/>: none.</summary>
    public (long Age, long RequestBudget) NextLifetime() => (Age(1.0), RequestBudget(1.0));

    private long Age(double share)
    {
        if (_options.MaxConnectionAge == Timeout.InfiniteTimeSpan)
        {
            return long.MaxValue;
        }

        var jitter = _options.MaxConnectionAgeJitter * ((2 * _random()) - 1);
        var seconds = _options.MaxConnectionAge.TotalSeconds * share * (1 + jitter);
        return (long)(seconds * _timeProvider.TimestampFrequency);
    }

    private long RequestBudget(double share) => _options.MaxRequestsPerConnection is int max
        ? Math.Max(1, (long)Math.Ceiling(max * share))
        : long.MaxValue;
}
