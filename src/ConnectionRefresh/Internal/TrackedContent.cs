using System.Net;

namespace ConnectionRefresh.Internal;

/// <summary>
/// Wraps a response's content so that the call's lease on its generation is released exactly once, when the
/// response has ended: its body was read to the end, it failed, or it was disposed. A read its caller cancelled is no
/// failure of the response: SocketsHttpHandler's HTTP/2 stream stays readable after it.
/// </summary>
/// <remarks>Thread-safe: completion is decided by one Interlocked exchange.</remarks>
internal sealed class TrackedContent : HttpContent
{
    // The content of SocketsHttpHandler's responses (an internal type): its stream is ready as soon as the
    // headers are, so ReadAsStream does not block. Null if the runtime renames it; then the async path is used (a
    // test watches for that).
    internal static readonly Type? SocketsResponseContentType =
        typeof(HttpClient).Assembly.GetType("System.Net.Http.HttpConnectionResponseContent", throwOnError: false);

    private readonly HttpContent _inner;
    private readonly ConnectionSlot _slot;
    private readonly HandlerGeneration _generation;

    // Only with a DrainTimeout: the default (no limit) allocates nothing for it on the call path.
    private readonly DrainLimit? _drain;
    private int _completed;

    public TrackedContent(
        HttpContent inner,
        ConnectionSlot slot,
        HandlerGeneration generation,
        CancellationTokenSource? linked)
    {
        _inner = inner;
        _slot = slot;
        _generation = generation;
        foreach (var header in inner.Headers.NonValidated)
        {
            foreach (var value in header.Value)
            {
                Headers.TryAddWithoutValidation(header.Key, value);
            }
        }

        if (generation.CutToken.CanBeCanceled)
        {
            _drain = new DrainLimit(linked);
            _drain.Registration = generation.CutToken.UnsafeRegister(static s => ((TrackedContent)s!).Cut(), this);
        }
    }

    /// <summary>True once DrainTimeout cut this call.</summary>
    public bool WasCut => _drain?.Cut == true;

    /// <summary>Releases the call's lease; only the first call counts.</summary>
    public void Complete()
    {
        if (Interlocked.Exchange(ref _completed, 1) != 0)
        {
            return;
        }

        if (_drain is not null)
        {
            _drain.Registration.Dispose();
            _drain.Linked?.Dispose();
        }

        _generation.Release();
    }

    /// <summary>Ends the call after a failure; returns the exception to throw instead, if any.</summary>
    public Exception? Fail(Exception exception, CancellationToken cancellationToken)
    {
        // A read the caller cancelled ends only that read: SocketsHttpHandler's HTTP/2 response stream stays open and
        // readable, so the call keeps its lease until the body ends or the response is disposed (as gRPC does).
        if (exception is OperationCanceledException && cancellationToken.IsCancellationRequested)
        {
            return null;
        }

        Complete();
        return WasCut
            ? ConnectionFailures.CutByDrainTimeout(exception, beforeResponse: false)
            : ConnectionFailures.OnCallFailed(exception, _slot, _generation, _slot.Telemetry, beforeResponse: false, cancellationToken);
    }

    protected override async Task<Stream> CreateContentReadStreamAsync(CancellationToken cancellationToken)
    {
        try
        {
            // SocketsHttpHandler's response content hands out its stream synchronously either way; taking it
            // through the synchronous API saves the Task<Stream> the asynchronous one allocates on every call.
            var inner = _inner.GetType() == SocketsResponseContentType
                ? _inner.ReadAsStream(cancellationToken)
                : await _inner.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            return new TrackedStream(inner, this);
        }
        catch (Exception exception)
        {
            var replacement = Fail(exception, cancellationToken);
            if (replacement is null)
            {
                throw;
            }

            throw replacement;
        }
    }

    protected override Task<Stream> CreateContentReadStreamAsync() => CreateContentReadStreamAsync(CancellationToken.None);

    protected override Stream CreateContentReadStream(CancellationToken cancellationToken)
        => new TrackedStream(_inner.ReadAsStream(cancellationToken), this);

    protected override Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        => SerializeToStreamAsync(stream, context, CancellationToken.None);

    protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context, CancellationToken cancellationToken)
    {
        var source = await CreateContentReadStreamAsync(cancellationToken).ConfigureAwait(false);
        await using (source.ConfigureAwait(false))
        {
            await source.CopyToAsync(stream, cancellationToken).ConfigureAwait(false);
        }
    }

    // HttpContent's synchronous copy (CopyTo, the buffering of a synchronous HttpClient.Send) has no default: without
    // this it throws NotSupportedException, where SocketsHttpHandler's own content copies synchronously.
    protected override void SerializeToStream(Stream stream, TransportContext? context, CancellationToken cancellationToken)
    {
        using var source = CreateContentReadStream(cancellationToken);
        source.CopyTo(stream);
    }

    protected override bool TryComputeLength(out long length)
    {
        length = 0;
        return false;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _inner.Dispose();
            Complete();
        }

        base.Dispose(disposing);
    }

    private void Cut()
    {
        _drain!.Cut = true;
        _inner.Dispose();
    }

    /// <summary>The linked token source and cut registration of a call under a DrainTimeout.</summary>
    private sealed class DrainLimit(CancellationTokenSource? linked)
    {
        public readonly CancellationTokenSource? Linked = linked;
        public CancellationTokenRegistration Registration;
        public volatile bool Cut;
    }
}
