using System.Net;

namespace ConnectionRefresh.Tests.Infrastructure;

/// <summary>
/// A stand-in for one SocketsHttpHandler generation in unit tests: answers with a small body, counts calls, and
/// fails loudly (as SocketsHttpHandler does) when a call arrives after it was disposed.
/// </summary>
internal sealed class StubHandler : HttpMessageHandler
{
    private int _calls;
    private volatile bool _disposed;

    public int Id { get; init; }

    /// <summary>The generation this handler belongs to: tests report its connections opening and closing to it.</summary>
    public ConnectionRefresh.Internal.HandlerGeneration? Generation { get; init; }

    public int Calls => Volatile.Read(ref _calls);

    public bool IsDisposed => _disposed;

    /// <summary>When set, SendAsync throws it.</summary>
    public Exception? Failure { get; set; }

    /// <summary>When set (and <see cref="Failure"/> is not), SendAsync answers with its task.</summary>
    public TaskCompletionSource<HttpResponseMessage>? Pending { get; set; }

    protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Interlocked.Increment(ref _calls);
        if (Failure is not null)
        {
            return Task.FromException<HttpResponseMessage>(Failure);
        }

        if (Pending is not null)
        {
            return Pending.Task;
        }

        if (cancellationToken.IsCancellationRequested)
        {
            return Task.FromCanceled<HttpResponseMessage>(cancellationToken);
        }

        var content = new StreamContent(new MemoryStream([1, 2, 3]));
        content.Headers.ContentType = new("application/grpc");
        return Task.FromResult(new HttpResponseMessage(HttpStatusCode.OK) { Content = content, RequestMessage = request });
    }

    protected override void Dispose(bool disposing)
    {
        _disposed = true;
        base.Dispose(disposing);
    }
}

/// <summary>Builds ConnectionRefreshHandlers over stub generations, with fake time and a fixed jitter draw.</summary>
internal sealed class StubGenerations
{
    private readonly List<StubHandler> _created = [];

    public StubGenerations(ConnectionRefreshOptions options, double random = 0.5)
    {
        Options = options;
        Metrics = new ConnectionRefresh.Internal.ConnectionRefreshMetrics(null);
        Telemetry = new ConnectionRefresh.Internal.ConnectionRefreshTelemetry("test", Metrics, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        Factory = new ConnectionRefresh.Internal.GenerationFactory(options, Create, Time, Telemetry, () => random);
    }

    public ConnectionRefreshOptions Options { get; }

    public Microsoft.Extensions.Time.Testing.FakeTimeProvider Time { get; } = new();

    public ConnectionRefresh.Internal.ConnectionRefreshMetrics Metrics { get; }

    public ConnectionRefresh.Internal.ConnectionRefreshTelemetry Telemetry { get; }

    public ConnectionRefresh.Internal.GenerationFactory Factory { get; }

    /// <summary>Called for each new generation's handler, before it is used.</summary>
    public Action<StubHandler>? OnCreate { get; set; }

    public IReadOnlyList<StubHandler> Created
    {
        get
        {
            lock (_created)
            {
                return [.. _created];
            }
        }
    }

    public HttpMessageInvoker CreateInvoker(out ConnectionRefresh.Internal.ConnectionRefreshHandler handler)
    {
        handler = new ConnectionRefresh.Internal.ConnectionRefreshHandler(Factory, Options.ConnectionsPerEndpoint);
        return new HttpMessageInvoker(handler);
    }

    private StubHandler Create(ConnectionRefresh.Internal.HandlerGeneration generation)
    {
        lock (_created)
        {
            var handler = new StubHandler { Id = _created.Count, Generation = generation };
            OnCreate?.Invoke(handler);
            _created.Add(handler);
            return handler;
        }
    }
}
