namespace ConnectionRefresh.Internal;

/// <summary>
/// A response body that tells its <see cref="TrackedContent"/> when the stream has ended. Zero-byte reads (how
/// grpc-dotnet waits for data) pass through untouched: only a read into a non-empty buffer that returns 0 is
/// the end of the stream.
/// </summary>
internal sealed class TrackedStream : Stream
{
    private readonly Stream _inner;
    private readonly TrackedContent _owner;

    public TrackedStream(Stream inner, TrackedContent owner)
    {
        _inner = inner;
        _owner = owner;
    }

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ValueTask<int> read;
        try
        {
            read = _inner.ReadAsync(buffer, cancellationToken);
        }
        catch (Exception exception)
        {
            return ValueTask.FromException<int>(_owner.Fail(exception, cancellationToken) ?? exception);
        }

        if (read.IsCompletedSuccessfully)
        {
            return new ValueTask<int>(Ended(read.Result, buffer.Length));
        }

        return AwaitRead(read, buffer.Length, cancellationToken);
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(Span<byte> buffer)
    {
        try
        {
            return Ended(_inner.Read(buffer), buffer.Length);
        }
        catch (Exception exception)
        {
            var replacement = _owner.Fail(exception, CancellationToken.None);
            if (replacement is null)
            {
                throw;
            }

            throw replacement;
        }
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _inner.Dispose();
            _owner.Complete();
        }

        base.Dispose(disposing);
    }

    private async ValueTask<int> AwaitRead(ValueTask<int> read, int requested, CancellationToken cancellationToken)
    {
        try
        {
            return Ended(await read.ConfigureAwait(false), requested);
        }
        catch (Exception exception)
        {
            var replacement = _owner.Fail(exception, cancellationToken);
            if (replacement is null)
            {
                throw;
            }

            throw replacement;
        }
    }

    private int Ended(int read, int requested)
    {
        if (read == 0 && requested > 0)
        {
            _owner.Complete();
        }

        return read;
    }
}
