namespace ConnectionRefresh.Server.Tests.TestSupport;

/// <summary>
/// A client connection's stream (from <c>SocketsHttpHandler.ConnectCallback</c>) whose reads a test can hold: what the
/// server sends still arrives, but the client only sees it once the test releases the reads. Makes "the server is done
/// before the client has read its GOAWAY" certain instead of a race on loopback. Thread-safe: the gate is swapped
/// atomically; reads and writes are the handler's, one of each at a time.
/// </summary>
internal sealed class GatedClientStream(Stream inner) : Stream
{
    private TaskCompletionSource? _gate;

    /// <summary>From now on, data read from the server is handed to the client only after <see cref="ReleaseReads"/>.</summary>
    public void HoldReads() =>
        Volatile.Write(ref _gate, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));

    public void ReleaseReads() => Interlocked.Exchange(ref _gate, null)?.TrySetResult();

    public override bool CanRead => inner.CanRead;

    public override bool CanSeek => false;

    public override bool CanWrite => inner.CanWrite;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        var read = await inner.ReadAsync(buffer, cancellationToken);
        var gate = Volatile.Read(ref _gate);
        if (gate is not null)
        {
            await gate.Task.WaitAsync(cancellationToken);
        }

        return read;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer, offset, count).GetAwaiter().GetResult();

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
        inner.WriteAsync(buffer, cancellationToken);

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        inner.WriteAsync(buffer, offset, count, cancellationToken);

    public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);

    public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);

    public override void Flush() => inner.Flush();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            inner.Dispose();
        }

        base.Dispose(disposing);
    }

    public override async ValueTask DisposeAsync()
    {
        await inner.DisposeAsync();
        await base.DisposeAsync();
    }
}
