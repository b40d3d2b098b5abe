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
/// KUBE-SEP (DNAT to the pod). The service's chains are rewritten with iptables-restore on every endpoint change; conntrack keeps
/// established connections on the pod they were DNATed to. The kernel picks the pod; the ClusterIP's userspace part only
/// carries bytes between the host namespace (where clients run) and the namespace. The <c>filter</c> table drops new
/// connections' SYNs to black-holed pods (chain <see cref="UnreachableChain"/>), so that a connect the kernel DNATs to one
/// hangs, as to a node that is gone.
/// </summary>
/// <remarks>
/// Thread-safe: rule rewrites, the chain bookkeeping and the disposal are serialised by a semaphore (never disposed, so a
/// rewrite that races the disposal ends quietly instead of hanging or throwing); sockets are created on the namespace thread.
/// </remarks>
internal sealed class IptablesProxy : IAsyncDisposable
{
    /// <summary>The service's virtual IP inside the namespace; any 127/8 address is local there, nothing listens on it.</summary>
    public static readonly IPEndPoint ServiceEndPoint = new(IPAddress.Parse("127.10.0.1"), 80);

    private const string ServiceChain = "KUBE-SVC-CRSIM";
    private const string UnreachableChain = "CRSIM-UNREACHABLE";
    private readonly SemaphoreSlim _rulesGate = new(1, 1);
    private readonly HashSet<int> _endpointChains = [];
    private bool _initialized;
    // Set by DisposeAsync under _rulesGate: the namespace is gone, later rewrites do nothing.
    private bool _disposed;
    private readonly NamespaceThread _thread;

    private IptablesProxy(string namespaceName, NamespaceThread thread)
    {
        NamespaceName = namespaceName;
        _thread = thread;
    }

    public string NamespaceName { get; }

    /// <summary>Test hook: awaited inside the rule lock before a rewrite runs iptables-restore.</summary>
    internal Func<Task>? BeforeRestore { get; set; }

    /// <summary>Test hook: runs once <see cref="DisposeAsync"/> has queued for the rule lock.</summary>
    internal Action? DisposeWaiting { get; set; }

    /// <summary>Test hook: gets each socket <see cref="ConnectToServiceAsync"/> creates, before it connects (e.g. to bind it).</summary>
    internal Action<Socket>? ServiceSocketCreated { get; set; }

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
            ServiceSocketCreated?.Invoke(socket);
            await socket.ConnectAsync(ServiceEndPoint, cancellationToken).ConfigureAwait(false);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Rewrites the service's chains and the unreachable pods' rules from <paramref name="snapshot"/>, taken under the rule lock (null: skip).</summary>
    public async Task ApplyEndpointsAsync(Func<EndpointRules?> snapshot, CancellationToken cancellationToken)
    {
        await _rulesGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var rules = _disposed ? null : snapshot();
            if (rules is null)
            {
                return;
            }

            var endpoints = rules.Ready;

            if (BeforeRestore is { } hook)
            {
                await hook().ConfigureAwait(false);
            }

            if (!_initialized)
            {
                await RestoreAsync(BuildBaseRules(ServiceEndPoint), noFlush: false, cancellationToken).ConfigureAwait(false);
                _initialized = true;
            }

            var stale = _endpointChains.Except(endpoints.Select(e => e.Port)).ToList();
            // One restore, filter first: a pod that takes over the port of a black-holed one that left loses the drop rule
            // before it becomes a DNAT target.
            await RestoreAsync(BuildUnreachableRules(rules.Unreachable) + BuildServiceRules(endpoints, stale), noFlush: true, cancellationToken).ConfigureAwait(false);
            _endpointChains.Clear();
            _endpointChains.UnionWith(endpoints.Select(e => e.Port));
        }
        finally
        {
            _rulesGate.Release();
        }
    }

    private Task RestoreAsync(string rules, bool noFlush, CancellationToken cancellationToken) =>
        ProcessRunner.RunAsync(
            "ip",
            noFlush ? ["netns", "exec", NamespaceName, "iptables-restore", "--noflush"] : ["netns", "exec", NamespaceName, "iptables-restore"],
            rules,
            cancellationToken);

    /// <summary>
    /// The rules written once: in the nat table the base chains, OUTPUT → KUBE-SERVICES → KUBE-SVC for the service address;
    /// in the filter table INPUT → <see cref="UnreachableChain"/> (see <see cref="BuildUnreachableRules"/>). Later changes
    /// only touch the KUBE-SVC, KUBE-SEP and unreachable chains (<c>--noflush</c>), as kube-proxy does: replacing the whole table while
    /// connections are established can break the NAT of those connections.
    /// KUBE-SEP-NONE is never jumped to; its DNAT rule only exists so that the table always holds one. Observed with
    /// iptables-nft (1.8.9, Linux 6.x): when the last DNAT rule of a namespace goes (scale to zero ready pods), replies on
    /// connections that were DNATed earlier are no longer translated back and those connections die, which a real node,
    /// with its many other services, never sees.
    /// </summary>
    internal static string BuildBaseRules(IPEndPoint service) => string.Create(
        CultureInfo.InvariantCulture,
        $"""
        *nat
        :PREROUTING ACCEPT [0:0]
        :INPUT ACCEPT [0:0]
        :OUTPUT ACCEPT [0:0]
        :POSTROUTING ACCEPT [0:0]
        :KUBE-SERVICES - [0:0]
        :{ServiceChain} - [0:0]
        :KUBE-SEP-NONE - [0:0]
        -A OUTPUT -j KUBE-SERVICES
        -A KUBE-SEP-NONE -p tcp -m tcp -j DNAT --to-destination 127.0.0.1:9
        -A KUBE-SERVICES -d {service.Address}/32 -p tcp -m tcp --dport {service.Port} -j {ServiceChain}
        COMMIT
        *filter
        :INPUT ACCEPT [0:0]
        :FORWARD ACCEPT [0:0]
        :OUTPUT ACCEPT [0:0]
        :{UnreachableChain} - [0:0]
        -A INPUT -j {UnreachableChain}
        COMMIT

        """);

    /// <summary>
    /// The filter chain for <c>iptables-restore --noflush</c> (declaring it flushes it): every new connection's SYN to a
    /// black-holed pod is dropped, so a connect that the kernel DNATed to it gets no answer and hangs, as a SYN to a node
    /// that is gone does. Dropped in INPUT, not OUTPUT: by then conntrack has confirmed the connection with its DNAT, so the
    /// retransmitted SYNs go to the same pod, as on a real node; dropped in OUTPUT (before the confirmation) each
    /// retransmission would be balanced afresh and could reach a live pod a second later.
    /// </summary>
    internal static string BuildUnreachableRules(IReadOnlyList<IPEndPoint> unreachable)
    {
        var rules = new StringBuilder("*filter\n");
        rules.Append(CultureInfo.InvariantCulture, $":{UnreachableChain} - [0:0]\n");
        foreach (var endpoint in unreachable)
        {
            rules.Append(CultureInfo.InvariantCulture, $"-A {UnreachableChain} -d {endpoint.Address}/32 -p tcp -m tcp --dport {endpoint.Port} --tcp-flags FIN,SYN,RST,ACK SYN -j DROP\n");
        }

        rules.Append("COMMIT\n");
        return rules.ToString();
    }

    /// <summary>
    /// The service's chains for <c>iptables-restore --noflush</c>: one KUBE-SEP chain per endpoint (named by its port)
    /// with its DNAT, the KUBE-SVC chain jumping to the i-th of n endpoints with probability 1/(n−i) (so each is picked
    /// with 1/n), and the chains of endpoints that left deleted.
    /// </summary>
    internal static string BuildServiceRules(IReadOnlyList<IPEndPoint> endpoints, IReadOnlyList<int> staleEndpointPorts)
    {
        var rules = new StringBuilder("*nat\n");
        rules.Append(CultureInfo.InvariantCulture, $":{ServiceChain} - [0:0]\n");
        foreach (var port in endpoints.Select(e => e.Port).Concat(staleEndpointPorts))
        {
            rules.Append(CultureInfo.InvariantCulture, $":KUBE-SEP-{port} - [0:0]\n");
        }

        for (var i = 0; i < endpoints.Count; i++)
        {
            var remaining = endpoints.Count - i;
            rules.Append(CultureInfo.InvariantCulture, $"-A {ServiceChain}");
            if (remaining > 1)
            {
                rules.Append(CultureInfo.InvariantCulture, $" -m statistic --mode random --probability {(1.0 / remaining).ToString("F10", CultureInfo.InvariantCulture)}");
            }

            rules.Append(CultureInfo.InvariantCulture, $" -j KUBE-SEP-{endpoints[i].Port}\n");
        }

        foreach (var endpoint in endpoints)
        {
            rules.Append(CultureInfo.InvariantCulture, $"-A KUBE-SEP-{endpoint.Port} -p tcp -m tcp -j DNAT --to-destination {endpoint.Address}:{endpoint.Port}\n");
        }

        foreach (var port in staleEndpointPorts)
        {
            rules.Append(CultureInfo.InvariantCulture, $"-X KUBE-SEP-{port}\n");
        }

        rules.Append("COMMIT\n");
        return rules.ToString();
    }

    /// <summary>What the rules are written from: the ready endpoints (DNAT targets) and the black-holed pods' endpoints (SYNs dropped).</summary>
    internal sealed record EndpointRules(IReadOnlyList<IPEndPoint> Ready, IReadOnlyList<IPEndPoint> Unreachable);

    /// <summary>
    /// Deletes the namespace, after a rewrite still running (a pod operation racing the cluster's disposal) has ended:
    /// deleting it under that rewrite would fail it. Rewrites asked for later do nothing.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        var gate = _rulesGate.WaitAsync();
        DisposeWaiting?.Invoke();
        await gate.ConfigureAwait(false);
        try
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            _thread.Dispose();
            await ProcessRunner.RunAsync("ip", ["netns", "del", NamespaceName]).ConfigureAwait(false);
        }
        finally
        {
            _rulesGate.Release();
        }
    }
}
