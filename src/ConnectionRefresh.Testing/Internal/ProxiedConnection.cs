using System.Buffers;
using System.Net.Sockets;

namespace ConnectionRefresh.Testing.Internal;

/// <summary>
/// One client connection accepted by the ClusterIP and pinned to one backend socket: two byte pumps, one per direction.
/// A half-close (FIN) is passed on; an error on either side resets both; a black-hole parks both pumps without closing,
/// and from then on neither data nor a FIN or reset from either side is passed on. A connection to a pod already
/// black-holed gets no backend at all: see <see cref="HoldAsync"/>. In iptables mode the backend connect may hang (the kernel
/// picked a black-holed pod): see <see cref="ConnectWhileWatchingClientAsync"/>.
/// </summary>
/// <remarks>
/// Thread-safe: the backend socket and the finished flag change only under <see cref="_gate"/>; the early bytes are written
/// by the watch, which has ended before the pumps that read them start.
/// </remarks>
internal sealed class ProxiedConnection : IDisposable
{
    private const int BufferSize = 16 * 1024;
    // What the client may send before its backend is connected; beyond that its close is no longer watched.
    private const int EarlyBytesLimit = 64 * 1024;
    // How long a connect may still take once the client has half-closed: a live pod in the namespace answers a SYN on
    // loopback at once, but the thread that connects inside the namespace may wait its turn on a loaded machine, so 5 s
    // (a dropped SYN has been retransmitted twice by then) rather than a tighter bound that could cancel a live pod's connect.
    private static readonly TimeSpan HalfClosedConnectGrace = TimeSpan.FromSeconds(5);
    private readonly Lock _gate = new();
    private readonly Socket _client;
    private readonly CancellationTokenSource _cts = new();
    private Socket? _backend;
    private bool _finished;
    private volatile bool _blackHoled;
    // Bytes the client sent while the backend was being connected (pooled buffer), passed on before anything else.
    private byte[]? _early;
    private int _earlyLength;

    public ProxiedConnection(Socket client) => _client = client;

    /// <summary>The pod this connection is pinned to, once known.</summary>
    public SimulatedPod? Pod { get; set; }

    /// <summary>Completes when both pumps have ended and both sockets are closed.</summary>
    public Task Completion { get; private set; } = Task.CompletedTask;

    /// <summary>Stops moving bytes in both directions; nothing is closed.</summary>
    public void BlackHole() => _blackHoled = true;

    /// <summary>
    /// Sends nothing to the client and drops whatever it sends, until it closes or resets its side (the returned task then
    /// completes) or <paramref name="cancellationToken"/> is cancelled (it then throws): a connection whose handshake with a
    /// dead node never completes. Called by the backend connector instead of connecting.
    /// </summary>
    public async Task HoldAsync(CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
        try
        {
            while (await _client.ReceiveAsync(buffer.AsMemory(0, BufferSize), SocketFlags.None, cancellationToken).ConfigureAwait(false) > 0)
            {
            }
        }
        catch (SocketException)
        {
            // Reset by the client: it gave up too.
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>
    /// Runs <paramref name="connect"/> (iptables mode: the connect inside the namespace, which hangs when the kernel picked a
    /// black-holed pod, whose SYNs are dropped) while reading what the client sends, so that a client that gives up ends the
    /// connect instead of leaving it to the kernel's SYN retries (net.ipv4.tcp_syn_retries: tens of seconds or more): a
    /// reset from the client cancels it at once, a FIN after <see cref="HalfClosedConnectGrace"/> (a client may send a
    /// request and half-close before a live pod's connect completes). What was read goes to the backend first. Past
    /// <see cref="EarlyBytesLimit"/> the client is no longer read, so its close is not seen; then the kernel's retries or
    /// <see cref="Reset"/> (dispose) end the connect.
    /// </summary>
    /// <exception cref="OperationCanceledException">The client gave up, or <paramref name="cancellationToken"/> was cancelled.</exception>
    public async Task<Socket> ConnectWhileWatchingClientAsync(Func<CancellationToken, Task<Socket>> connect, CancellationToken cancellationToken)
    {
        using var connectCancellation = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        using var stopWatching = new CancellationTokenSource();
        var connecting = connect(connectCancellation.Token);
        var watching = WatchClientAsync(stopWatching.Token);
        Socket? backend = null;
        try
        {
            if (await Task.WhenAny(connecting, watching).ConfigureAwait(false) == watching)
            {
                var seen = await watching.ConfigureAwait(false);
                if (seen == ClientSide.Reset)
                {
                    await connectCancellation.CancelAsync().ConfigureAwait(false);
                }
                else if (seen == ClientSide.Closed)
                {
                    connectCancellation.CancelAfter(HalfClosedConnectGrace);
                }
            }

            backend = await connecting.ConfigureAwait(false);
        }
        finally
        {
            // The pumps must not read the client while the watch still does.
            await stopWatching.CancelAsync().ConfigureAwait(false);
            if (await watching.ConfigureAwait(false) == ClientSide.Reset && backend is not null)
            {
                // The reset was consumed here; the pumps would read a FIN instead.
                backend.Dispose();
                backend = null;
            }
        }

        return backend ?? throw new OperationCanceledException("The client reset its connection while the backend was connecting.");
    }

    private async Task<ClientSide> WatchClientAsync(CancellationToken cancellationToken)
    {
        try
        {
            while (true)
            {
                if (_earlyLength == EarlyBytesLimit)
                {
                    return ClientSide.Unwatched;
                }

                if (_early is null || _earlyLength == _early.Length)
                {
                    var larger = ArrayPool<byte>.Shared.Rent(Math.Min(Math.Max(2 * _earlyLength, BufferSize), EarlyBytesLimit));
                    if (_early is not null)
                    {
                        _early.AsSpan(0, _earlyLength).CopyTo(larger);
                        ArrayPool<byte>.Shared.Return(_early);
                    }

                    _early = larger;
                }

                var room = Math.Min(_early.Length, EarlyBytesLimit) - _earlyLength;
                var read = await _client.ReceiveAsync(_early.AsMemory(_earlyLength, room), SocketFlags.None, cancellationToken).ConfigureAwait(false);
                if (read == 0)
                {
                    return ClientSide.Closed;
                }

                _earlyLength += read;
            }
        }
        catch (OperationCanceledException)
        {
            return ClientSide.Unwatched;
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            return ClientSide.Reset; // Reset by the client, or by Reset (dispose), which cancels the connect too.
        }
    }

    /// <summary>Starts the connection: <paramref name="connectBackend"/> opens the backend socket (or returns null to reject).</summary>
    public void Start(Func<ProxiedConnection, CancellationToken, ValueTask<Socket?>> connectBackend, Action<ProxiedConnection> onCompleted) =>
        Completion = RunAsync(connectBackend, onCompleted);

    /// <summary>Resets both sockets (RST, as when a process is killed) and stops the pumps.</summary>
    public void Reset()
    {
        Socket? backend;
        lock (_gate)
        {
            if (_finished)
            {
                return;
            }

            _finished = true;
            backend = _backend;
        }

        Abort(_client);
        if (backend is not null)
        {
            Abort(backend);
        }

        _cts.Cancel();
    }

    public void Dispose() => Reset();

    private async Task RunAsync(Func<ProxiedConnection, CancellationToken, ValueTask<Socket?>> connectBackend, Action<ProxiedConnection> onCompleted)
    {
        await Task.Yield(); // Do not run the connection on the accept loop.
        try
        {
            Socket? backend = null;
            try
            {
                backend = await connectBackend(this, _cts.Token).ConfigureAwait(false);
            }
#pragma warning disable CA1031 // Whatever failed, the answer is the same: the connection is rejected (reset).
            catch (Exception)
#pragma warning restore CA1031
            {
            }

            if (backend is null)
            {
                Reset();
                return;
            }

            lock (_gate)
            {
                if (!_finished)
                {
                    _backend = backend;
                }
            }

            if (!ReferenceEquals(_backend, backend))
            {
                Abort(backend);
                return;
            }

            await Task.WhenAll(PumpAsync(_client, backend, _early.AsMemory(0, _earlyLength)), PumpAsync(backend, _client, default)).ConfigureAwait(false);

            bool graceful;
            lock (_gate)
            {
                graceful = !_finished;
                _finished = true;
            }

            if (graceful)
            {
                _client.Dispose();
                backend.Dispose();
            }
        }
        finally
        {
            if (_early is { } early)
            {
                _early = null;
                ArrayPool<byte>.Shared.Return(early);
            }

            onCompleted(this);
        }
    }

    private async Task PumpAsync(Socket from, Socket to, ReadOnlyMemory<byte> early)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
        try
        {
            if (!early.IsEmpty)
            {
                await ParkWhileBlackHoledAsync().ConfigureAwait(false);
                await SendAllAsync(to, early).ConfigureAwait(false);
            }

            while (true)
            {
                await ParkWhileBlackHoledAsync().ConfigureAwait(false);
                var read = await from.ReceiveAsync(buffer.AsMemory(0, BufferSize), SocketFlags.None, _cts.Token).ConfigureAwait(false);
                if (read == 0)
                {
                    // A FIN that arrives once the connection is black-holed is lost too (the receive may have started before).
                    await ParkWhileBlackHoledAsync().ConfigureAwait(false);
                    try
                    {
                        to.Shutdown(SocketShutdown.Send);
                    }
                    catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
                    {
                    }

                    return;
                }

                // Bytes read just before a black-hole are lost, as on a node that died.
                await ParkWhileBlackHoledAsync().ConfigureAwait(false);
                await SendAllAsync(to, buffer.AsMemory(0, read)).ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            if (_blackHoled && !_cts.IsCancellationRequested)
            {
                // A reset from either side of a black-holed connection goes nowhere either: the other side stays open
                // until Reset (dispose) ends the wait.
                try
                {
                    await ParkWhileBlackHoledAsync().ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                }
            }

            Reset();
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private async Task SendAllAsync(Socket to, ReadOnlyMemory<byte> bytes)
    {
        var sent = 0;
        while (sent < bytes.Length)
        {
            sent += await to.SendAsync(bytes[sent..], SocketFlags.None, _cts.Token).ConfigureAwait(false);
        }
    }

    private Task ParkWhileBlackHoledAsync() =>
        _blackHoled ? Task.Delay(Timeout.InfiniteTimeSpan, _cts.Token) : Task.CompletedTask;

    private static void Abort(Socket socket)
    {
        try
        {
            socket.LingerState = new LingerOption(true, 0);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
        }

        socket.Dispose();
    }

    /// <summary>What the watch during a backend connect saw of the client.</summary>
    private enum ClientSide
    {
        /// <summary>Stopped (the connect ended) or no room left to read into: nothing said about the client.</summary>
        Unwatched,

        /// <summary>A FIN: the client half-closed or closed.</summary>
        Closed,

        /// <summary>A reset (or the connection was reset here).</summary>
        Reset,
    }
}
