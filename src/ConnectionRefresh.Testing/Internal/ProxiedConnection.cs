using System.Buffers;
using System.Net.Sockets;

namespace ConnectionRefresh.Testing.Internal;

/// <summary>
/// One client connection accepted by the ClusterIP and pinned to one backend socket: two byte pumps, one per direction.
/// A half-close (FIN) is passed on; an error on either side resets both; a black-hole parks both pumps without closing,
/// and from then on neither data nor a FIN or reset from either side is passed on. A connection to a pod already
/// black-holed gets no backend at all: see <see cref="HoldAsync"/>.
/// </summary>
/// <remarks>Thread-safe: the backend socket and the finished flag change only under <see cref="_gate"/>.</remarks>
internal sealed class ProxiedConnection : IDisposable
{
    private const int BufferSize = 16 * 1024;
    private readonly Lock _gate = new();
    private readonly Socket _client;
    private readonly CancellationTokenSource _cts = new();
    private Socket? _backend;
    private bool _finished;
    private volatile bool _blackHoled;

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

            await Task.WhenAll(PumpAsync(_client, backend), PumpAsync(backend, _client)).ConfigureAwait(false);

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
            onCompleted(this);
        }
    }

    private async Task PumpAsync(Socket from, Socket to)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
        try
        {
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
                var sent = 0;
                while (sent < read)
                {
                    sent += await to.SendAsync(buffer.AsMemory(sent, read - sent), SocketFlags.None, _cts.Token).ConfigureAwait(false);
                }
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
}
