using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.Extensions.Hosting;

namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// Closes, when the application starts stopping, every connection of an endpoint whose client has not sent a byte yet
/// (a pre-connected spare socket, as grpc-dotnet's balancer keeps one), before Kestrel's shutdown sends any GOAWAY.
/// </summary>
/// <remarks>
/// Why: grpc-dotnet takes its spare when it next needs a connection, which is when the pod of its current connection
/// exits, so just after that connection's GOAWAY. If the spare is on the same pod, Kestrel's shutdown sends it a GOAWAY
/// in place of SETTINGS at the same moment, and the close follows; a check of the spare made before the close arrives
/// finds it open and hands it over, and SocketsHttpHandler fails the call that asked for it. Closed at
/// <c>ApplicationStopping</c>, which the host raises before it stops Kestrel, the spare's end is on its way before the
/// GOAWAY that makes the client look at it. One per host (<see cref="For"/>), shared by all of its endpoints.
/// Thread safety: the set is guarded by its own lock; the table of hosts by <see cref="PerHostGate"/>.
/// </remarks>
internal sealed class SilentConnectionCloser
{
    // One closer per host, not per endpoint build: Kestrel builds an endpoint's connection pipeline each time it binds
    // it (a configuration reload rebinds the changed endpoints), and a closer per build would stay registered on
    // ApplicationStopping, so reachable, for the host's life. Weak keys: the entry goes with the host.
    private static readonly ConditionalWeakTable<IHostApplicationLifetime, SilentConnectionCloser> PerHost = new();
    private static readonly Lock PerHostGate = new();

    private readonly Lock _gate = new();
    private readonly Dictionary<ConnectionContext, LingeringTransport> _connections = [];
    private bool _stopping;

    private SilentConnectionCloser(IHostApplicationLifetime lifetime) =>
        lifetime.ApplicationStopping.Register(static state => ((SilentConnectionCloser)state!).CloseSilent(), this);

    /// <summary>The host's closer, created (and registered on ApplicationStopping) once; none without a host.</summary>
    public static SilentConnectionCloser? For(IHostApplicationLifetime? lifetime)
    {
        if (lifetime is null)
        {
            return null;
        }

        // Under a lock rather than ConditionalWeakTable.GetValue, whose factory may run twice: each run registers.
        lock (PerHostGate)
        {
            if (!PerHost.TryGetValue(lifetime, out var closer))
            {
                closer = new SilentConnectionCloser(lifetime);
                PerHost.Add(lifetime, closer);
            }

            return closer;
        }
    }

    /// <summary>Adds a connection; false when the application is already stopping (then nothing is tracked).</summary>
    public bool Add(ConnectionContext connection, LingeringTransport transport)
    {
        lock (_gate)
        {
            if (_stopping)
            {
                return false;
            }

            _connections[connection] = transport;
            return true;
        }
    }

    public void Remove(ConnectionContext connection)
    {
        lock (_gate)
        {
            _connections.Remove(connection);
        }
    }

    private void CloseSilent()
    {
        List<KeyValuePair<ConnectionContext, LingeringTransport>> silent;
        lock (_gate)
        {
            _stopping = true;
            silent = [.. _connections.Where(c => !c.Value.ClientSentData)];
        }

        foreach (var (connection, transport) in silent)
        {
            // The end of the stream (FIN) at once; Kestrel's GOAWAY, written later, can no longer go out. Without the
            // socket (another transport), an abort.
            var socket = connection.Features.Get<IConnectionSocketFeature>()?.Socket;
            if (socket is null)
            {
                connection.Abort(new ConnectionAbortedException("The server is stopping and the client had not sent a byte."));
                continue;
            }

            try
            {
                // Bytes the transport has not received from the socket yet (a hop through Kestrel's I/O queue, longer
                // on a busy machine), or has received but Kestrel not yet read (its read completes one thread-pool hop
                // later): the client has just begun to use the connection, whose handshake a FIN would fail (the
                // server's SETTINGS could no longer go out). Kestrel's GOAWAY then lets the client finish or retry its
                // call. Checked in the order the bytes travel, so that none moves past both checks between them.
                if (socket.Available > 0 || transport.ClientDataArrived)
                {
                    continue;
                }

                socket.Shutdown(SocketShutdown.Send);
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                // Already closed.
            }
        }
    }
}
