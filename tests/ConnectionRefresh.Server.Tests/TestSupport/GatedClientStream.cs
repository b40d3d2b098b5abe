namespace ConnectionRefresh.Server.Tests.TestSupport;

/// <summary>
/// A client connection's stream (from <c>SocketsHttpHandler.ConnectCallback</c>) whose reads and close a test can hold:
/// what the server sends still arrives, but the client only sees it once the test releases the reads; and the client's
/// close (its FIN) reaches the server only once the test releases it. Makes "the server is done before the client has
/// read its GOAWAY" and "the server has decided on the hold before the client's end arrives" certain instead of races
/// on loopback. Thread-safe: the gates are swapped atomically, the close happens once; reads and writes are the
/// handler's, one of each at a time.
/// </summary>
internal sealed class GatedClientStream(Stream inner) : Stream
{
    private TaskCompletionSource? _gate;
    private TaskCompletionSource? _closeGate;
    private int _closeRequested;

    /// <summary>From now on, data read from the server is handed to the client only after <see cref="ReleaseReads"/>.</summary>
    public void HoldReads() =>
        Volatile.Write(ref _gate, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));

    public void ReleaseReads() => Interlocked.Exchange(ref _gate, null)?.TrySetResult();

    /// <summary>From now on, the client's close of this stream closes the socket only after <see cref="ReleaseClose"/>.</summary>
    public void HoldClose() =>
        Volatile.Write(ref _closeGate, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));

    public void ReleaseClose() => Interlocked.Exchange(ref _closeGate, null)?.TrySetResult();

    /// <summary>Whether the client has closed (disposed) this stream, whether or not its socket is closed yet.</summary>
    public bool CloseRequested => Volatile.Read(ref _closeRequested) != 0;

    /// <summary>
    /// With reads and close held: once Kestrel is done with the connection (<paramref name="kestrelDone"/>), lets the
    /// client read (the GOAWAY), and lets the close it then asks for reach the server only once the connection age has
    /// decided on the hold (it records the connection's age right after: <paramref name="host"/>'s EndedCount).
    /// Returns when the reads were released (<see cref="System.Diagnostics.Stopwatch.GetTimestamp"/>).
    /// </summary>
    public async Task<long> ReleaseOnceKestrelIsDoneAsync(Task kestrelDone, GreeterTestHost host)
    {
        await Poll.WithTimeout(kestrelDone, "Kestrel to finish the connection after its GOAWAY");
        var released = System.Diagnostics.Stopwatch.GetTimestamp();
        ReleaseReads();
        await Poll.UntilAsync(() => CloseRequested, "the client to close its side");
        await Poll.UntilAsync(() => host.EndedCount == 1, "the connection age to decide on the hold (it records the age right after)");
        ReleaseClose();
        return released;
    }

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

    // Stream.DisposeAsync comes here too. A close while held closes the socket when the hold is released (a released
    // gate has been swapped out first, so the close then happens at once).
    protected override void Dispose(bool disposing)
    {
        if (disposing && Interlocked.Exchange(ref _closeRequested, 1) == 0)
        {
            var gate = Volatile.Read(ref _closeGate);
            if (gate is null)
            {
                inner.Dispose();
            }
            else
            {
                _ = gate.Task.ContinueWith(_ => inner.Dispose(), CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
            }
        }

        base.Dispose(disposing);
    }
}
