using System.Buffers;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core.Features;

namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// Wraps a connection's transport so that the socket can stay open for a moment after Kestrel has finished with it:
/// Kestrel's completions of the input and output are held back until <see cref="CloseAsync"/> decides.
/// </summary>
/// <remarks>
/// Why: when Kestrel ends an HTTP/2 connection on which no stream runs, it writes GOAWAY and closes the socket at once,
/// whoever decided: this package (age, idleness), the server stopping, Kestrel's keep-alive timeout
/// (<c>KestrelServerLimits.KeepAliveTimeout</c>, by default after 130 s without a stream) or a protocol error. A
/// client that picked the connection for a new call just before then reads GOAWAY and end-of-stream together, and
/// .NET's SocketsHttpHandler fails that call instead of retrying it elsewhere. grpc-go avoids the race with a PING
/// round-trip before its final GOAWAY; here the socket lingers, still open, until the client closes its side (it does
/// so as soon as it has processed the GOAWAY) or <c>maxLinger</c> passes. Kestrel's shutdown waits for connection
/// middleware, so a linger delays the host's StopAsync by at most <c>maxLinger</c>, and the abort at the end of the
/// host's shutdown timeout ends it at once. A lingering connection still counts against Kestrel's
/// <c>MaxConcurrentConnections</c>, for at most <c>maxLinger</c>.
/// A GOAWAY with an error code is the exception: after it RFC 9113 requires closing the connection, so the transport
/// follows the HTTP/2 frames Kestrel writes (<see cref="Http2GoAwayScanner"/>) when it sees them in clear, that is,
/// when the client's first bytes are the HTTP/2 preface. It cannot when this middleware runs outside Kestrel's TLS
/// middleware (the order endpoint defaults give): it sees only TLS records there, so it cannot tell an error GOAWAY
/// from a graceful one. What it can still learn there is the protocol ALPN chose: Kestrel's TLS middleware disposes its
/// SslStream, which alone knows it, before this middleware decides on the linger, so the transport notes it from the
/// SslStream (<see cref="ISslStreamFeature"/>) while that writes, once the handshake is done (<see cref="NegotiatedHttp2"/>).
/// Thread safety: Kestrel calls the reader and writer from its own loops, as with any transport; the completion, data
/// and GOAWAY flags and the protocol noted from ALPN are written by Kestrel's calls before the connection delegate
/// returns and read after it.
/// </remarks>
internal sealed class LingeringTransport : IDuplexPipe
{
    private readonly IDuplexPipe _inner;
    private readonly HeldReader _input;
    private readonly HeldWriter _output;

    /// <param name="inner">The connection's transport.</param>
    /// <param name="connectionFeatures">
    /// The connection's features, where Kestrel's TLS middleware, when it runs over this transport, puts its
    /// SslStream; <see langword="null"/>: ALPN is not noted.
    /// </param>
    public LingeringTransport(IDuplexPipe inner, IFeatureCollection? connectionFeatures = null)
    {
        _inner = inner;
        _output = new HeldWriter(inner.Output);
        _input = new HeldReader(inner.Input, _output, connectionFeatures);
    }

    /// <summary>The transport this one wraps.</summary>
    public IDuplexPipe Inner => _inner;

    /// <summary>
    /// Whether Kestrel has read any byte from the client. One that never sent any (a pre-connected spare socket) has
    /// no request in flight, so it gets no linger: see <see cref="ServerConnectionAgeMiddleware"/>.
    /// </summary>
    public bool ClientSentData => _input.ReceivedData;

    /// <summary>
    /// Whether bytes from the client have reached this transport: read by Kestrel (<see cref="ClientSentData"/>), or
    /// already in the wrapped transport's pipe but not yet read by Kestrel (its read completes on the thread pool, one
    /// hop later, or it has not read yet). A client whose bytes are there has begun to use the connection. Errs towards
    /// true: a read that completed without bytes (cancelled, or the client's end) and not yet handed to Kestrel counts.
    /// Thread-safe; for <see cref="SilentConnectionCloser"/>.
    /// </summary>
    public bool ClientDataArrived => _input.DataArrived();

    /// <summary>
    /// Whether Kestrel wrote a GOAWAY with an error code (a connection error: RFC 9113 requires closing the connection
    /// after it). Only known for a connection whose HTTP/2 frames this transport sees in clear; otherwise false.
    /// </summary>
    public bool SentErrorGoAway => _output.SentErrorGoAway;

    /// <summary>
    /// Whether ALPN chose <c>h2</c>, for a connection whose TLS Kestrel runs over this transport (its first bytes were a
    /// TLS handshake): noted from Kestrel's SslStream at the first write after the handshake, as Kestrel's TLS
    /// middleware disposes that stream before the connection delegate returns. <see langword="null"/> when not noted:
    /// no TLS over it, or no write after the handshake.
    /// </summary>
    public bool? NegotiatedHttp2 => _output.NegotiatedHttp2;

    /// <summary>
    /// Whether the client's first bytes were an HTTP/1.x request: a client that does not speak HTTP/2 here has no GOAWAY
    /// to read, even on an HTTP/2-only endpoint (Kestrel answers it "400, Connection: close"), so it gets no linger.
    /// </summary>
    public bool ClientSentHttp1Request => _input.SentHttp1Request;

    public PipeReader Input => _input;

    public PipeWriter Output => _output;

    /// <summary>
    /// Completes the real transport. With <paramref name="linger"/>, first keeps the socket open, discarding whatever
    /// the client still sends, until the client closes its side, the connection is aborted (at server shutdown, when
    /// the host's shutdown timeout ends) or <paramref name="maxLinger"/> passes. A client that had already closed its
    /// side ends it at the first read, without waiting. Never throws.
    /// </summary>
    /// <returns>Whether the linger ran until <paramref name="maxLinger"/> without the client closing its side.</returns>
    public async Task<bool> CloseAsync(bool linger, TimeSpan maxLinger, TimeProvider time)
    {
        var expired = false;
        if (linger && !_input.Failed && !_output.Failed)
        {
            using var timeout = new CancellationTokenSource(maxLinger, time);
            try
            {
                while (true)
                {
                    var result = await _inner.Input.ReadAsync(timeout.Token).ConfigureAwait(false);
                    _inner.Input.AdvanceTo(result.Buffer.End);

                    // Only the client's end (or the connection's) ends the linger. A cancelled read is not one: Kestrel
                    // cancels the transport's pending read when it finishes an HTTP/2 connection, and when its own
                    // reader had already stopped (it was copying data the client sent just then), that cancellation
                    // is left over for this loop's first read.
                    if (result.IsCompleted)
                    {
                        break;
                    }
                }
            }
            catch (OperationCanceledException) when (timeout.IsCancellationRequested)
            {
                // maxLinger passed: close anyway.
                expired = true;
            }
            catch (Exception ex) when (ex is OperationCanceledException or IOException or InvalidOperationException or System.Net.Sockets.SocketException)
            {
                // The connection broke or was aborted meanwhile (ConnectionAbortedException is an
                // OperationCanceledException): nothing left to wait for.
            }
        }

        await _input.ReleaseAsync().ConfigureAwait(false);
        await _output.ReleaseAsync().ConfigureAwait(false);
        return expired;
    }

    /// <summary>
    /// A reader whose completion is held until <see cref="ReleaseAsync"/>, and which notes the first data read: when
    /// that is the HTTP/2 client preface, <paramref name="output"/> follows the frames the server writes.
    /// </summary>
    /// <remarks>
    /// Until the first data is read, Kestrel's reads and <see cref="DataArrived"/> (another thread) take
    /// <see cref="_gate"/>, so that DataArrived knows which of the inner reader's states it may look at: a pending read
    /// (its completion, without taking its result), no read at all (a TryRead that consumes nothing), or a result
    /// Kestrel holds. Afterwards every call passes straight through.
    /// </remarks>
    private sealed class HeldReader(PipeReader inner, HeldWriter output, IFeatureCollection? features) : PipeReader
    {
        private readonly Lock _gate = new();
        private bool _completed;
        private Exception? _error;
        private volatile bool _receivedData;
        private volatile bool _sentHttp1Request;

        // Under _gate, before the first data: Kestrel's read whose completion it awaits, and whether Kestrel has a read
        // going (pending, or a result not yet advanced past).
        private ValueTask<ReadResult>? _pendingRead;
        private bool _reading;

        public bool Failed => _error is not null;

        public bool ReceivedData => _receivedData;

        public bool SentHttp1Request => _sentHttp1Request;

        public override void AdvanceTo(SequencePosition consumed)
        {
            inner.AdvanceTo(consumed);
            EndRead();
        }

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
        {
            inner.AdvanceTo(consumed, examined);
            EndRead();
        }

        private void EndRead()
        {
            if (!_receivedData)
            {
                lock (_gate)
                {
                    _reading = false;
                }
            }
        }

        /// <summary>See <see cref="ClientDataArrived"/>.</summary>
        public bool DataArrived()
        {
            if (_receivedData)
            {
                return true;
            }

            lock (_gate)
            {
                if (_receivedData)
                {
                    return true;
                }

                // Completed but not yet handed over: the pipe has scheduled Kestrel's continuation on the thread pool.
                if (_pendingRead is { } pending)
                {
                    return pending.IsCompleted;
                }

                // Kestrel holds a result without data (a cancelled read, or the client's end): nothing the client began.
                if (_reading)
                {
                    return false;
                }

                // No read going: look, and leave everything (bytes, a pending cancellation) for Kestrel's next read.
                try
                {
                    if (!inner.TryRead(out var result))
                    {
                        return false;
                    }

                    inner.AdvanceTo(result.Buffer.Start);
                    if (result.IsCanceled)
                    {
                        inner.CancelPendingRead();
                    }

                    return !result.Buffer.IsEmpty;
                }
                catch (InvalidOperationException)
                {
                    // The connection is ending: Kestrel is done and the middleware reads or completed the transport
                    // itself. Leave it alone.
                    return true;
                }
            }
        }

        public override void CancelPendingRead() => inner.CancelPendingRead();

        // Reads pass straight through once data has arrived; only the first ones look at the result (a pooled state
        // machine, so even those allocate nothing).
        public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default) =>
            _receivedData ? inner.ReadAsync(cancellationToken) : ReadUntilDataAsync(cancellationToken);

        public override bool TryRead(out ReadResult result)
        {
            if (_receivedData)
            {
                return inner.TryRead(out result);
            }

            lock (_gate)
            {
                var read = inner.TryRead(out result);
                if (read)
                {
                    _reading = true;
                    OnRead(result.Buffer);
                }

                return read;
            }
        }

        [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
        [System.Diagnostics.CodeAnalysis.SuppressMessage(
            "Reliability",
            "CA2012:Use ValueTasks correctly",
            Justification = "Its result is taken once (GetResult); before that only its completion is watched (IsCompleted, OnCompleted), as await does.")]
        private async ValueTask<ReadResult> ReadUntilDataAsync(CancellationToken cancellationToken)
        {
            ValueTask<ReadResult> read;
            lock (_gate)
            {
                _reading = true;
                read = inner.ReadAsync(cancellationToken);
                if (!read.IsCompleted)
                {
                    _pendingRead = read;
                }
            }

            if (!read.IsCompleted)
            {
                // Waits without taking the result: it is taken under the lock, with the pending read forgotten and the
                // data noted in the same step, so that DataArrived never finds the bytes in neither place.
                await new Completion(read);
            }

            lock (_gate)
            {
                _pendingRead = null;
                var result = read.GetAwaiter().GetResult();
                OnRead(result.Buffer);
                return result;
            }
        }

        /// <summary>Awaits a read's completion without taking its result (a <see cref="ValueTask{T}"/> gives it once).</summary>
        private readonly struct Completion(ValueTask<ReadResult> read) : ICriticalNotifyCompletion
        {
            public bool IsCompleted => read.IsCompleted;

            public Completion GetAwaiter() => this;

            public void GetResult()
            {
            }

            public void OnCompleted(Action continuation) => read.ConfigureAwait(false).GetAwaiter().OnCompleted(continuation);

            public void UnsafeOnCompleted(Action continuation) => read.ConfigureAwait(false).GetAwaiter().UnsafeOnCompleted(continuation);
        }

        // Kestrel writes no HTTP/2 frame before it has read the client's preface, so the writer sees all of them. The
        // exception, a GOAWAY written before (a close decided before the client spoke), ends the connection's output:
        // nothing follows that the scan could misread.
        private void OnRead(in ReadOnlySequence<byte> buffer)
        {
            if (buffer.IsEmpty)
            {
                return;
            }

            _receivedData = true;
            if (StartsAsHttp2Preface(buffer))
            {
                output.ScanFrames();
            }
            else if (features is not null && FirstByte(buffer) == TlsHandshakeRecord)
            {
                output.NoteAlpn(features);
            }
            else if (StartsAsHttp1Request(buffer))
            {
                _sentHttp1Request = true;
            }
        }

        // A TLS record's first byte: its content type, 22 for a handshake (a ClientHello, first). HTTP/1.x starts with a
        // method's letter, HTTP/2 with the preface's "P".
        private const byte TlsHandshakeRecord = 22;

        private static byte FirstByte(in ReadOnlySequence<byte> buffer)
        {
            Span<byte> first = stackalloc byte[1];
            buffer.Slice(0, 1).CopyTo(first);
            return first[0];
        }

        // The first bytes are an HTTP/1.x method and a space. Only a request: other bytes (a PROXY protocol header that a
        // middleware inside this one reads, say) tell nothing about the protocol Kestrel then speaks.
        private static bool StartsAsHttp1Request(in ReadOnlySequence<byte> buffer)
        {
            Span<byte> start = stackalloc byte[8];
            var length = (int)Math.Min(buffer.Length, start.Length);
            buffer.Slice(0, length).CopyTo(start);
            var first = start[..length];
            return first.StartsWith("GET "u8) || first.StartsWith("POST "u8) || first.StartsWith("PUT "u8)
                || first.StartsWith("HEAD "u8) || first.StartsWith("DELETE "u8) || first.StartsWith("OPTIONS "u8)
                || first.StartsWith("PATCH "u8) || first.StartsWith("TRACE "u8) || first.StartsWith("CONNECT "u8);
        }

        // The first bytes, however few arrived, are the start of "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": HTTP/2 in clear, not
        // a TLS handshake or HTTP/1.x.
        private static bool StartsAsHttp2Preface(in ReadOnlySequence<byte> buffer)
        {
            var preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8;
            Span<byte> start = stackalloc byte[preface.Length];
            var length = (int)Math.Min(buffer.Length, preface.Length);
            buffer.Slice(0, length).CopyTo(start);
            return start[..length].SequenceEqual(preface[..length]);
        }

        public override void Complete(Exception? exception = null)
        {
            _completed = true;
            _error = exception;
        }

        public ValueTask ReleaseAsync() => inner.CompleteAsync(_completed ? _error : null);
    }

    /// <summary>
    /// A writer whose completion is held until <see cref="ReleaseAsync"/>, and which, once told to, follows the HTTP/2
    /// frames written through it. Without that, every call passes straight through.
    /// </summary>
    private sealed class HeldWriter(PipeWriter inner) : PipeWriter
    {
        // While TLS runs over this transport and ALPN is not noted yet: the connection's features, where Kestrel's TLS
        // middleware puts its SslStream (it does so before its handshake, which writes through here first).
        private IFeatureCollection? _tlsFeatures;
        private bool? _negotiatedHttp2;
        private bool _completed;
        private Exception? _error;
        private bool _scanning;
        private Http2GoAwayScanner _scanner;

        // While scanning: the buffer handed out by the last GetMemory/GetSpan, whose first bytes Advance commits.
        private Memory<byte> _buffer;

        public bool Failed => _error is not null;

        public bool SentErrorGoAway => _scanner.SawErrorGoAway;

        public bool? NegotiatedHttp2 => _negotiatedHttp2;

        public void ScanFrames() => _scanning = true;

        public void NoteAlpn(IFeatureCollection features) => _tlsFeatures = features;

        // The SslStream writes through here: its handshake first, then what Kestrel writes once the handshake is done
        // (HTTP/2 starts with its SETTINGS), when ALPN's answer is read, once. Before the handshake ends, or once the
        // stream failed, IsAuthenticated is false and nothing is read. Without Kestrel's SslStream at the first write (no
        // TLS middleware inside, only bytes that looked like TLS), there is nothing to note.
        private void NoteAlpnOnce()
        {
            try
            {
                var ssl = _tlsFeatures!.Get<ISslStreamFeature>()?.SslStream;
                if (ssl is null)
                {
                    _tlsFeatures = null;
                }
                else if (ssl.IsAuthenticated)
                {
                    _negotiatedHttp2 = ssl.NegotiatedApplicationProtocol == System.Net.Security.SslApplicationProtocol.Http2;
                    _tlsFeatures = null;
                }
            }
            catch (Exception ex) when (ex is ObjectDisposedException or InvalidOperationException)
            {
                // Disposed or failed meanwhile: the protocol stays unknown, as without this note.
                _tlsFeatures = null;
            }
        }

        public override bool CanGetUnflushedBytes => inner.CanGetUnflushedBytes;

        public override long UnflushedBytes => inner.UnflushedBytes;

        public override void Advance(int bytes)
        {
            if (_scanning && bytes <= _buffer.Length)
            {
                _scanner.Scan(_buffer.Span[..bytes]);
                _buffer = default;
            }

            inner.Advance(bytes);
        }

        public override void CancelPendingFlush() => inner.CancelPendingFlush();

        public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default)
        {
            if (_tlsFeatures is not null)
            {
                NoteAlpnOnce();
            }

            return inner.FlushAsync(cancellationToken);
        }

        public override Memory<byte> GetMemory(int sizeHint = 0) =>
            _scanning ? (_buffer = inner.GetMemory(sizeHint)) : inner.GetMemory(sizeHint);

        // A span cannot be kept for Advance: while scanning, the memory behind it is.
        public override Span<byte> GetSpan(int sizeHint = 0) =>
            _scanning ? (_buffer = inner.GetMemory(sizeHint)).Span : inner.GetSpan(sizeHint);

        public override ValueTask<FlushResult> WriteAsync(ReadOnlyMemory<byte> source, CancellationToken cancellationToken = default)
        {
            if (_scanning)
            {
                _scanner.Scan(source.Span);
            }
            else if (_tlsFeatures is not null)
            {
                NoteAlpnOnce();
            }

            return inner.WriteAsync(source, cancellationToken);
        }

        public override void Complete(Exception? exception = null)
        {
            _completed = true;
            _error = exception;
        }

        public ValueTask ReleaseAsync() => inner.CompleteAsync(_completed ? _error : null);
    }
}
