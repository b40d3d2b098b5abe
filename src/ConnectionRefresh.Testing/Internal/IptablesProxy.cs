using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;

namespace ConnectionRefresh.Testing.Internal;

/// <summary>
/// The <see cref="KubeProxyMode.Iptables"/> ClusterIP: a network namespace (<c>crsim-…</c>) with loopback up, pods listening
/// inside it, and the kube-proxy iptables pattern in its <c>nat</c> table: OUTPUT → KUBE-SERVICES → KUBE-SVC (one
/// <c>statistic random</c> jump per endpoint, probability 1/(n−i) for the i-th of n so each is picked with 1/n) →
/// KUBE-SEP (DNAT to the pod). The whole table is rewritten with iptables-restore on every endpoint change; conntrack keeps
/// established connections on the pod they were DNATed to. The kernel picks the pod; the ClusterIP's userspace part only
/// carries bytes between the host namespace (where clients run) and the namespace.
/// </summary>
/// <remarks>Thread-safe: rule rewrites are serialised by a semaphore; sockets are created on the namespace thread.</remarks>
internal sealed class IptablesProxy : IAsyncDisposable
{
    /// <summary>The service's virtual IP inside the namespace; any 127/8 address is local there, nothing listens on it.</summary>
    public static readonly IPEndPoint ServiceEndPoint = new(IPAddress.Parse("127.10.0.1"), 80);

    private readonly SemaphoreSlim _rulesGate = new(1, 1);
    private readonly NamespaceThread _thread;

    private IptablesProxy(string namespaceName, NamespaceThread thread)
    {
        NamespaceName = namespaceName;
        _thread = thread;
    }

    public string NamespaceName { get; }

    public static async Task<IptablesProxy> CreateAsync(CancellationToken cancellationToken)
    {
        var name = "crsim-" + RandomNumberGenerator.GetHexString(10, lowercase: true);
        await ProcessRunner.RunAsync("ip", ["netns", "add", name], cancellationToken: cancellationToken).ConfigureAwait(false);
        try
        {
            await ProcessRunner.RunAsync("ip", ["netns", "exec", name, "ip", "link", "set", "lo", "up"], cancellationToken: cancellationToken).ConfigureAwait(false);
            return new IptablesProxy(name, NamespaceThread.Start(name));
        }
        catch
        {
            await ProcessRunner.RunAsync("ip", ["netns", "del", name], cancellationToken: CancellationToken.None).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Kestrel's listen-socket factory: the pod's listening socket is created and bound inside the namespace.</summary>
    public Socket CreateBoundListenSocket(EndPoint endPoint) => _thread.Invoke(() =>
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Bind(endPoint);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    });

    /// <summary>Opens a connection to the service address inside the namespace; the kernel's nat rules pick the pod.</summary>
    public async Task<Socket> ConnectToServiceAsync(CancellationToken cancellationToken)
    {
        var socket = _thread.Invoke(() => new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true });
        try
        {
            await socket.ConnectAsync(ServiceEndPoint, cancellationToken).ConfigureAwait(false);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Rewrites the nat table from <paramref name="snapshot"/>, taken under the rule lock (null: skip).</summary>
    public async Task ApplyEndpointsAsync(Func<IReadOnlyList<IPEndPoint>?> snapshot, CancellationToken cancellationToken)
    {
        await _rulesGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var endpoints = snapshot();
            if (endpoints is null)
            {
                return;
            }

            await ProcessRunner.RunAsync("ip", ["netns", "exec", NamespaceName, "iptables-restore"], BuildRules(ServiceEndPoint, endpoints), cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _rulesGate.Release();
        }
    }

    /// <summary>The nat table in iptables-restore format, as kube-proxy's iptables mode writes it for one service.</summary>
    internal static string BuildRules(IPEndPoint service, IReadOnlyList<IPEndPoint> endpoints)
    {
        const string Svc = "KUBE-SVC-CRSIM";
        var rules = new StringBuilder();
        rules.Append("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
        rules.Append(":KUBE-SERVICES - [0:0]\n").Append(CultureInfo.InvariantCulture, $":{Svc} - [0:0]\n");
        for (var i = 0; i < endpoints.Count; i++)
        {
            rules.Append(CultureInfo.InvariantCulture, $":KUBE-SEP-{i + 1} - [0:0]\n");
        }

        rules.Append("-A OUTPUT -j KUBE-SERVICES\n");
        rules.Append(CultureInfo.InvariantCulture, $"-A KUBE-SERVICES -d {service.Address}/32 -p tcp -m tcp --dport {service.Port} -j {Svc}\n");
        for (var i = 0; i < endpoints.Count; i++)
        {
            var remaining = endpoints.Count - i;
            rules.Append(CultureInfo.InvariantCulture, $"-A {Svc}");
            if (remaining > 1)
            {
                rules.Append(CultureInfo.InvariantCulture, $" -m statistic --mode random --probability {(1.0 / remaining).ToString("F10", CultureInfo.InvariantCulture)}");
            }

            rules.Append(CultureInfo.InvariantCulture, $" -j KUBE-SEP-{i + 1}\n");
        }

        for (var i = 0; i < endpoints.Count; i++)
        {
            rules.Append(CultureInfo.InvariantCulture, $"-A KUBE-SEP-{i + 1} -p tcp -m tcp -j DNAT --to-destination {endpoints[i].Address}:{endpoints[i].Port}\n");
        }

        rules.Append("COMMIT\n");
        return rules.ToString();
    }

    public async ValueTask DisposeAsync()
    {
        _thread.Dispose();
        await ProcessRunner.RunAsync("ip", ["netns", "del", NamespaceName]).ConfigureAwait(false);
        _rulesGate.Dispose();
    }
}
