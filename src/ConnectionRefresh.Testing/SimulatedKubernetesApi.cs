using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Security.Cryptography.X509Certificates;
using System.Threading.Channels;
using k8s;
using k8s.Models;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Testing;

/// <summary>
/// A Kubernetes API server in a process, for EndpointSlices only: Kestrel on <c>127.0.0.1</c> (a free port) speaking the
/// real wire format, so a real Kubernetes client (for example the <c>kubernetes:///</c> resolver of
/// ConnectionRefresh.Kubernetes) can watch it. It serves
/// <c>GET /apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices</c> as a LIST (a JSON <c>EndpointSliceList</c>
/// with <c>metadata.resourceVersion</c>, whose items carry no <c>apiVersion</c>/<c>kind</c>, as kube-apiserver writes a
/// built-in type's list, while a GET's object and every watch event's object carry them;
/// <c>labelSelector=kubernetes.io/service-name=NAME</c> filters, and so does a <c>fieldSelector</c> on <c>metadata.name</c>
/// or <c>metadata.namespace</c> (<c>=</c>, <c>==</c>, <c>!=</c>, comma-joined), which is how a client watches one slice)
/// or, with <c>watch=true</c>, as a chunked stream of newline-separated watch events from a <c>resourceVersion</c>
/// (<c>ADDED</c>/<c>MODIFIED</c>/<c>DELETED</c>, <c>BOOKMARK</c> when <c>allowWatchBookmarks=true</c>; without a
/// resourceVersion, or from <c>0</c>, the current slices first, as <c>ADDED</c>), and
/// <c>GET /apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}</c> as a read of one slice (the
/// <c>EndpointSlice</c> as JSON; a <c>watch=true</c> there is ignored, as kube-apiserver ignores it on a named path);
/// bearer tokens are checked.
/// Errors are answered as kube-apiserver answers them, with a <c>Status</c> object (<c>kind: Status</c>, <c>apiVersion: v1</c>,
/// <c>status: Failure</c>, <c>message</c>, <c>reason</c>, <c>code</c>) and that code as the HTTP status: a rejected token
/// 401 <c>Unauthorized</c> (on any path); a token RBAC refuses (<see cref="SetForbiddenTokens"/>) 403 <c>Forbidden</c>; a read of a slice that does not exist 404 <c>NotFound</c> with <c>details</c>
/// (<c>endpointslices.discovery.k8s.io "NAME" not found</c>); a field selector on another field, or one it cannot parse, 400
/// <c>BadRequest</c>; an unknown path 404 <c>NotFound</c>; a method other than GET
/// on the EndpointSlice collection or on one slice 405 <c>MethodNotAllowed</c>. A watch from a compacted resourceVersion
/// gets what the watch cache sends: HTTP 200, then one <c>ERROR</c> event whose object is a 410 <c>Expired</c> Status
/// ("too old resource version"), then the end of the stream (or, with <see cref="GoneAsHttpStatus"/>, HTTP 410 with that Status as the body).
/// Slices are written with <see cref="Apply"/> and <see cref="Delete"/>, or follow a <see cref="SimulatedCluster"/>'s
/// pods with <see cref="MirrorEndpoints"/>. Faults: <see cref="Compact"/>, <see cref="CloseWatches"/>, <see cref="SetOutage"/>.
/// </summary>
/// <example>
/// <code>
/// await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 3 });
/// await using var api = await SimulatedKubernetesApi.StartAsync();
/// using var mirror = api.MirrorEndpoints(cluster, service: "greeter", ns: "default", portName: "grpc");
/// services.AddKubernetesResolver(o =&gt; { o.ApiServer = api.Url; o.ServiceAccountPath = tempDirWithTokenFile; });
/// services.AddGrpcClient&lt;Greeter.GreeterClient&gt;(o =&gt; o.Address = new("kubernetes:///greeter.default:grpc"))
///     .ConfigureChannel(o =&gt; { o.Credentials = ChannelCredentials.Insecure; o.ServiceConfig = roundRobin; });
/// </code>
/// </example>
/// <remarks>Thread-safe: state is guarded by one lock; watchers get their lines through channels.</remarks>
public sealed class SimulatedKubernetesApi : IAsyncDisposable
{
    private const string ServiceLabel = "kubernetes.io/service-name";

    private readonly Lock _lock = new();
    private readonly Dictionary<(string Ns, string Name), V1EndpointSlice> _slices = [];
    private readonly List<HistoryEntry> _history = [];
    private readonly List<Watcher> _watchers = [];
    private readonly HashSet<string> _acceptedTokens = new(StringComparer.Ordinal);
    private readonly HashSet<string> _forbiddenTokens = new(StringComparer.Ordinal);
    private readonly ConcurrentQueue<string> _seenTokens = new();
    private readonly ConcurrentDictionary<string, ConnectionContext> _connections = new();
    private readonly WebApplication _app;
    // Cancelled by DisposeAsync: ends the open watches and any that a client starts while the server stops.
    private readonly CancellationTokenSource _stopping = new();
    private long _resourceVersion = 1000;
    private long _compactedBelow;
    private volatile bool _outage;
    private int _listCount;
    private int _watchCount;
    private readonly List<EndpointMirror> _mirrors = [];

    private SimulatedKubernetesApi(WebApplication app) => _app = app;

    /// <summary>The API server's address, <c>http://127.0.0.1:port</c> (<c>https://</c> when started with <see cref="StartHttpsAsync"/>): set it as the client's API server (e.g. <c>KubernetesResolverOptions.ApiServer</c>).</summary>
    public Uri Url { get; private set; } = null!;

    /// <summary>Requests with the watch flag that got a 200 stream (or a 410).</summary>
    public int WatchCount => Volatile.Read(ref _watchCount);

    /// <summary>Successful LIST requests.</summary>
    public int ListCount => Volatile.Read(ref _listCount);

    /// <summary>Every bearer token presented, in order.</summary>
    public IReadOnlyCollection<string> SeenTokens => _seenTokens;

    /// <summary>Watch streams currently open.</summary>
    public int ActiveWatches
    {
        get
        {
            lock (_lock)
            {
                return _watchers.Count;
            }
        }
    }

    /// <summary>
    /// When true, a watch from a compacted resourceVersion gets HTTP 410 with the <c>Expired</c> Status as the body, instead of
    /// what kube-apiserver sends (HTTP 200 and an in-stream <c>ERROR</c> event with that Status; the default, false). Both
    /// forms reach clients, so a client should handle both.
    /// </summary>
    public bool GoneAsHttpStatus { get; set; }

    /// <summary>Starts an API server with no slices.</summary>
    /// <param name="acceptedTokens">
    /// The bearer tokens it accepts (any other gets 401 Unauthorized); none means every request is accepted, with or
    /// without a token.
    /// </param>
    /// <returns>The started server. Dispose it to stop it and close every connection.</returns>
    public static Task<SimulatedKubernetesApi> StartAsync(params string[] acceptedTokens) => StartCoreAsync(null, acceptedTokens);

    /// <summary>
    /// Starts an API server with no slices that serves HTTPS with <paramref name="serverCertificate"/>, as a real one does
    /// in a pod (<c>https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT</c>, verified with the service account's
    /// <c>ca.crt</c>).
    /// </summary>
    /// <param name="serverCertificate">
    /// The server certificate, with its private key; for clients that check the host name it needs the subject alternative
    /// name <c>IP:127.0.0.1</c>.
    /// </param>
    /// <param name="acceptedTokens">The bearer tokens it accepts, as for <see cref="StartAsync"/>.</param>
    /// <returns>The started server, at <c>https://127.0.0.1:port</c>. Dispose it to stop it and close every connection.</returns>
    public static Task<SimulatedKubernetesApi> StartHttpsAsync(X509Certificate2 serverCertificate, params string[] acceptedTokens)
    {
        ArgumentNullException.ThrowIfNull(serverCertificate);
        return StartCoreAsync(serverCertificate, acceptedTokens);
    }

    private static async Task<SimulatedKubernetesApi> StartCoreAsync(X509Certificate2? serverCertificate, string[] acceptedTokens)
    {
        ArgumentNullException.ThrowIfNull(acceptedTokens);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        SimulatedKubernetesApi? server = null;
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(IPAddress.Loopback, 0, listen =>
        {
            listen.Protocols = HttpProtocols.Http1AndHttp2;
            listen.Use(next => async connection =>
            {
                if (server!._outage)
                {
                    connection.Abort();
                    return;
                }

                server._connections[connection.ConnectionId] = connection;
                try
                {
                    await next(connection).ConfigureAwait(false);
                }
                finally
                {
                    server._connections.TryRemove(connection.ConnectionId, out _);
                }
            });
            if (serverCertificate is not null)
            {
                listen.UseHttps(serverCertificate);
            }
        }));
        var app = builder.Build();
        server = new SimulatedKubernetesApi(app);
        foreach (var token in acceptedTokens)
        {
            server._acceptedTokens.Add(token);
        }

        app.MapGet("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", (Func<HttpContext, string, Task>)server.HandleAsync);
        app.MapGet("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices/{name}", (Func<HttpContext, string, string, Task>)server.HandleGetAsync);
        app.MapFallback((Func<HttpContext, Task>)server.HandleUnmatchedAsync);
        await app.StartAsync().ConfigureAwait(false);
        server.Url = new Uri(app.Urls.Single());
        return server;
    }

    /// <summary>Replaces the accepted bearer tokens (a rotation revokes the old one).</summary>
    /// <param name="tokens">The tokens accepted from now on; none means every request is accepted.</param>
    public void SetAcceptedTokens(params string[] tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        lock (_lock)
        {
            _acceptedTokens.Clear();
            _acceptedTokens.UnionWith(tokens);
        }
    }

    /// <summary>
    /// Makes RBAC refuse these bearer tokens: a LIST, WATCH or GET of EndpointSlices with one of them gets 403
    /// <c>Forbidden</c>, as for an identity without a Role that allows the verb. Authentication comes first: a token that
    /// is not accepted (see <see cref="SetAcceptedTokens"/>) still gets 401. The Status is kube-apiserver's, e.g.
    /// <c>endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:default:default" cannot list resource
    /// "endpointslices" in API group "discovery.k8s.io" in the namespace "default"</c> (the verb <c>list</c>, <c>watch</c>
    /// or <c>get</c>; the user is always the default service account of the request's namespace), with <c>details</c>.
    /// </summary>
    /// <param name="tokens">The tokens refused from now on, replacing the previous ones; none (the default) refuses no token.</param>
    public void SetForbiddenTokens(params string[] tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        lock (_lock)
        {
            _forbiddenTokens.Clear();
            _forbiddenTokens.UnionWith(tokens);
        }
    }

    /// <summary>Creates or replaces a slice (matched by namespace and <c>metadata.name</c>): ADDED or MODIFIED for watchers.</summary>
    /// <param name="ns">The namespace.</param>
    /// <param name="slice">
    /// The slice, with a <c>metadata.name</c> and the label <c>kubernetes.io/service-name</c> for clients that watch a
    /// Service. A copy is stored, with the namespace and a new <c>resourceVersion</c>.
    /// </param>
    public void Apply(string ns, V1EndpointSlice slice)
    {
        ArgumentException.ThrowIfNullOrEmpty(ns);
        ArgumentNullException.ThrowIfNull(slice);
        ArgumentException.ThrowIfNullOrEmpty(slice.Metadata?.Name, nameof(slice));
        lock (_lock)
        {
            var key = (ns, slice.Metadata.Name);
            var type = _slices.ContainsKey(key) ? "MODIFIED" : "ADDED";
            var copy = Clone(slice);
            // Stored typed, as the API server stores it, whatever the writer sent: GET and watch events name the type.
            copy.ApiVersion = "discovery.k8s.io/v1";
            copy.Kind = "EndpointSlice";
            copy.Metadata.NamespaceProperty = ns;
            copy.Metadata.ResourceVersion = NextResourceVersion();
            _slices[key] = copy;
            Record(ns, copy, type);
        }
    }

    /// <summary>Deletes a slice: DELETED for watchers. Deleting a slice that does not exist does nothing.</summary>
    /// <param name="ns">The namespace.</param>
    /// <param name="name">The slice's <c>metadata.name</c>.</param>
    public void Delete(string ns, string name)
    {
        lock (_lock)
        {
            if (_slices.Remove((ns, name), out var slice))
            {
                var copy = Clone(slice);
                copy.Metadata.ResourceVersion = NextResourceVersion();
                Record(ns, copy, "DELETED");
            }
        }
    }

    /// <summary>Sends a BOOKMARK with the current resourceVersion to watchers that allowed bookmarks.</summary>
    public void SendBookmark()
    {
        lock (_lock)
        {
            var line = KubernetesJson.Serialize(new WatchLine("BOOKMARK", new V1EndpointSlice
            {
                ApiVersion = "discovery.k8s.io/v1",
                Kind = "EndpointSlice",
                Metadata = new V1ObjectMeta { ResourceVersion = _resourceVersion.ToString(CultureInfo.InvariantCulture) },
            }));
            foreach (var watcher in _watchers.Where(w => w.Bookmarks))
            {
                watcher.Lines.Writer.TryWrite(line);
            }
        }
    }

    /// <summary>Forgets the event history: a watch from any earlier resourceVersion gets 410 Gone.</summary>
    public void Compact()
    {
        lock (_lock)
        {
            _history.Clear();
            _compactedBelow = _resourceVersion;
        }
    }

    /// <summary>Ends every open watch stream (the server side of a watch timeout or an API server restart).</summary>
    public void CloseWatches()
    {
        lock (_lock)
        {
            foreach (var watcher in _watchers)
            {
                watcher.Lines.Writer.TryComplete();
            }
        }
    }

    /// <summary>While on, the server is unreachable: every connection, open or new, is aborted.</summary>
    /// <param name="outage">Whether the server is unreachable.</param>
    public void SetOutage(bool outage)
    {
        _outage = outage;
        if (outage)
        {
            foreach (var connection in _connections.Values)
            {
                connection.Abort();
            }
        }
    }

    /// <summary>
    /// Publishes the pods of <paramref name="cluster"/> as EndpointSlices of the Service <paramref name="service"/> and
    /// keeps them up to date until the returned handle or this server is disposed. Each pod is published at its address in
    /// the simulated network: <c>127.0.0.1</c> and a port of its own that relays to the pod, so that
    /// <see cref="SimulatedCluster.BlackHole"/>, kills and exits affect clients that connect to pods directly as they
    /// affect ClusterIP clients (<see cref="SimulatedPod.Address"/> would bypass them). As the ports differ, each pod gets
    /// its own slice (<c>{service}-{pod name}</c>) with one endpoint and one port named <paramref name="portName"/>; a
    /// client resolves the named port per slice, as it must with real EndpointSlices. Conditions follow the simulator as the
    /// EndpointSlice controller writes them (KEP-1672): <c>ready</c> and <c>serving</c> while the pod is ready (a black-holed pod
    /// stays ready, as it does until its node is declared dead), neither after <see cref="SimulatedCluster.SetReadyAsync"/> turned
    /// it off; while it stops gracefully <c>terminating: true</c> and <c>ready: false</c>, with <c>serving: true</c> as long as it
    /// still listens (during <see cref="SimulatedClusterOptions.PreStopDelay"/>, unless it had been made not ready before) and
    /// <c>serving: false</c> once its server stopped listening; the slice is deleted when the pod exits or is killed. The current pods are published before
    /// this method returns; later changes within a few milliseconds of the cluster's change.
    /// </summary>
    /// <param name="cluster">A cluster in <see cref="KubeProxyMode.Userspace"/> mode (in iptables mode the pods cannot be reached from the test process).</param>
    /// <param name="service">The Service name (label <c>kubernetes.io/service-name</c>). Default <c>greeter</c>.</param>
    /// <param name="ns">The namespace. Default <c>default</c>.</param>
    /// <param name="portName">The Service port's name. Default <c>grpc</c>.</param>
    /// <returns>A handle; dispose it to stop following the cluster (the slices stay as they are).</returns>
    /// <exception cref="NotSupportedException">The cluster runs in <see cref="KubeProxyMode.Iptables"/> mode.</exception>
    public IDisposable MirrorEndpoints(SimulatedCluster cluster, string service = "greeter", string ns = "default", string portName = "grpc")
    {
        ArgumentNullException.ThrowIfNull(cluster);
        ArgumentException.ThrowIfNullOrEmpty(service);
        ArgumentException.ThrowIfNullOrEmpty(ns);
        ArgumentException.ThrowIfNullOrEmpty(portName);
        if (cluster.ProxyMode != KubeProxyMode.Userspace)
        {
            throw new NotSupportedException("MirrorEndpoints needs a cluster in KubeProxyMode.Userspace: in iptables mode the pods live in a network namespace the test process cannot reach.");
        }

        var mirror = new EndpointMirror(this, cluster, service, ns, portName);
        lock (_lock)
        {
            _mirrors.Add(mirror);
        }

        mirror.Start();
        return mirror;
    }

    /// <summary>Stops following clusters, ends every watch and stops the server.</summary>
    /// <returns>A task that completes when the server has stopped.</returns>
    public async ValueTask DisposeAsync()
    {
        List<EndpointMirror> mirrors;
        lock (_lock)
        {
            mirrors = [.. _mirrors];
        }

        foreach (var mirror in mirrors)
        {
            mirror.Dispose();
        }

        // Clients start a new watch as soon as one ends; one that arrived before Kestrel stopped taking requests would
        // otherwise stay open until Kestrel's shutdown timeout (30 s).
        await _stopping.CancelAsync().ConfigureAwait(false);
        CloseWatches();
        await _app.StopAsync().ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
    }

    private async Task HandleAsync(HttpContext context, string ns)
    {
        var query = context.Request.Query;
        var watch = string.Equals(query["watch"], "true", StringComparison.OrdinalIgnoreCase);
        // As kube-apiserver's request info: a field selector that requires one metadata.name makes that the request's
        // object name, so RBAC (resourceNames) and its refusal see it.
        if (await RejectedAsync(context, ns, watch ? "watch" : "list", FieldTerm.ExactName(query["fieldSelector"].ToString())).ConfigureAwait(false))
        {
            return;
        }

        var service = ParseServiceSelector(query["labelSelector"].ToString());
        var fieldSelector = query["fieldSelector"].ToString();
        if (!FieldTerm.TryParse(fieldSelector, out var fields, out var invalid))
        {
            // The list handler's answer to a field selector it cannot parse or convert (errors.NewBadRequest).
            await WriteStatusAsync(context, Status(StatusCodes.Status400BadRequest, "BadRequest", invalid)).ConfigureAwait(false);
            return;
        }

        var selection = new Selection(service, fields);
        if (watch)
        {
            await WatchAsync(context, ns, selection, query["resourceVersion"].ToString(),
                string.Equals(query["allowWatchBookmarks"], "true", StringComparison.OrdinalIgnoreCase),
                int.TryParse(query["timeoutSeconds"], CultureInfo.InvariantCulture, out var timeout) ? timeout : 0).ConfigureAwait(false);
        }
        else
        {
            await ListAsync(context, ns, selection).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// A read of one slice by name: the slice, or the API server's 404 for a named object that does not exist. Query
    /// parameters other than GetOptions' are ignored, <c>watch=true</c> included: kube-apiserver serves a named path with
    /// its GET handler, and a watch of one object is a watch of the collection with <c>fieldSelector=metadata.name=NAME</c>.
    /// </summary>
    private async Task HandleGetAsync(HttpContext context, string ns, string name)
    {
        if (await RejectedAsync(context, ns, "get", name).ConfigureAwait(false))
        {
            return;
        }

        V1EndpointSlice? slice;
        lock (_lock)
        {
            slice = _slices.TryGetValue((ns, name), out var stored) ? Clone(stored) : null;
        }

        if (slice is null)
        {
            // errors.NewNotFound: the resource's plural and group, the name, and the same in details.
            await WriteStatusAsync(context, Status(StatusCodes.Status404NotFound, "NotFound", $"endpointslices.discovery.k8s.io \"{name}\" not found")
                with { Details = new StatusDetails(name, "discovery.k8s.io", "endpointslices") }).ConfigureAwait(false);
            return;
        }

        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync(KubernetesJson.Serialize(slice), context.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>Records the request's bearer token in <see cref="SeenTokens"/> and says whether it is accepted.</summary>
    private bool Authorize(HttpContext context)
    {
        var token = BearerToken(context);
        _seenTokens.Enqueue(token);
        lock (_lock)
        {
            return _acceptedTokens.Count == 0 || _acceptedTokens.Contains(token);
        }
    }

    /// <summary>Whether RBAC refuses the request's (authenticated) token; see <see cref="SetForbiddenTokens"/>.</summary>
    /// <summary>
    /// Authentication, then RBAC, as kube-apiserver orders them: writes 401 for a token that is not accepted, 403 for one
    /// refused <paramref name="verb"/> (see <see cref="SetForbiddenTokens"/>), and says whether it did.
    /// </summary>
    private async Task<bool> RejectedAsync(HttpContext context, string ns, string verb, string? name)
    {
        if (!Authorize(context))
        {
            await WriteStatusAsync(context, Status(StatusCodes.Status401Unauthorized, "Unauthorized", "Unauthorized")).ConfigureAwait(false);
            return true;
        }

        if (IsForbidden(context))
        {
            await WriteStatusAsync(context, Forbidden(ns, verb, name)).ConfigureAwait(false);
            return true;
        }

        return false;
    }

    private bool IsForbidden(HttpContext context)
    {
        var token = BearerToken(context);
        lock (_lock)
        {
            return _forbiddenTokens.Contains(token);
        }
    }

    private static string BearerToken(HttpContext context)
    {
        var header = context.Request.Headers.Authorization.ToString();
        return header.StartsWith("Bearer ", StringComparison.Ordinal) ? header["Bearer ".Length..] : "";
    }

    /// <summary>The RBAC authorizer's refusal (errors.NewForbidden), naming the verb, the resource and, for a GET, the object.</summary>
    private static StatusObject Forbidden(string ns, string verb, string? name) =>
        Status(StatusCodes.Status403Forbidden, "Forbidden",
            $"endpointslices.discovery.k8s.io{(name is null ? "" : $" \"{name}\"")} is forbidden: User \"system:serviceaccount:{ns}:default\" " +
            $"cannot {verb} resource \"endpointslices\" in API group \"discovery.k8s.io\" in the namespace \"{ns}\"")
        with { Details = new StatusDetails(name, "discovery.k8s.io", "endpointslices") };

    private async Task ListAsync(HttpContext context, string ns, Selection selection)
    {
        V1EndpointSliceList list;
        lock (_lock)
        {
            list = new V1EndpointSliceList
            {
                ApiVersion = "discovery.k8s.io/v1",
                Kind = "EndpointSliceList",
                Metadata = new V1ListMeta { ResourceVersion = _resourceVersion.ToString(CultureInfo.InvariantCulture) },
                Items = _slices.Where(s => s.Key.Ns == ns && selection.Matches(ns, s.Value)).Select(s => ListItem(s.Value)).ToList(),
            };
        }

        Interlocked.Increment(ref _listCount);
        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync(KubernetesJson.Serialize(list), context.RequestAborted).ConfigureAwait(false);
    }

    private async Task WatchAsync(HttpContext context, string ns, Selection selection, string resourceVersion, bool bookmarks, int timeoutSeconds)
    {
        var from = long.TryParse(resourceVersion, CultureInfo.InvariantCulture, out var rv) ? rv : 0;
        var watcher = new Watcher(ns, selection, bookmarks);
        bool gone;
        long oldest;
        lock (_lock)
        {
            oldest = _compactedBelow;
            gone = from != 0 && from < oldest;
            if (!gone && from == 0)
            {
                // No resourceVersion (or "0"): as the API server does, the current state first, every slice as ADDED.
                foreach (var slice in _slices.Where(s => s.Key.Ns == ns && selection.Matches(ns, s.Value)).Select(s => s.Value))
                {
                    watcher.Lines.Writer.TryWrite(KubernetesJson.Serialize(new WatchLine("ADDED", slice)));
                }

                _watchers.Add(watcher);
            }
            else if (!gone)
            {
                foreach (var entry in _history.Where(e => e.ResourceVersion > from && e.Ns == ns && selection.Matches(ns, e.Slice)))
                {
                    watcher.Lines.Writer.TryWrite(entry.Line);
                }

                _watchers.Add(watcher);
            }
        }

        Interlocked.Increment(ref _watchCount);
        // The watch cache's answer (errors.NewResourceExpired): reason Expired, code 410, the requested and the oldest
        // resourceVersion in the message.
        var goneStatus = gone ? Status(StatusCodes.Status410Gone, "Expired", $"too old resource version: {from} ({oldest})") : null;
        if (goneStatus is not null && GoneAsHttpStatus)
        {
            await WriteStatusAsync(context, goneStatus).ConfigureAwait(false);
            return;
        }

        context.Response.ContentType = "application/json";
        await context.Response.StartAsync(context.RequestAborted).ConfigureAwait(false);
        if (goneStatus is not null)
        {
            // What kube-apiserver sends for a WATCH from a compacted resourceVersion: HTTP 200, one ERROR event, the end.
            await context.Response.WriteAsync(KubernetesJson.Serialize(new WatchLine("ERROR", goneStatus)) + "\n", context.RequestAborted).ConfigureAwait(false);
            return;
        }

        using var timeout = timeoutSeconds > 0 ? new CancellationTokenSource(TimeSpan.FromSeconds(timeoutSeconds)) : new CancellationTokenSource();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted, timeout.Token, _stopping.Token);
        try
        {
            await foreach (var line in watcher.Lines.Reader.ReadAllAsync(stop.Token).ConfigureAwait(false))
            {
                await context.Response.WriteAsync(line + "\n", stop.Token).ConfigureAwait(false);
                await context.Response.Body.FlushAsync(stop.Token).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
            // Client went away, or the watch timed out: end the stream.
        }
        finally
        {
            lock (_lock)
            {
                _watchers.Remove(watcher);
            }
        }
    }

    /// <summary>
    /// Answers a request nothing else serves as the API server does: 401 for a rejected token first (it authenticates before
    /// it routes), then 405 for a method other than GET on the EndpointSlice collection or one slice (this server only
    /// reads), else 404.
    /// </summary>
    private async Task HandleUnmatchedAsync(HttpContext context)
    {
        if (!Authorize(context))
        {
            await WriteStatusAsync(context, Status(StatusCodes.Status401Unauthorized, "Unauthorized", "Unauthorized")).ConfigureAwait(false);
            return;
        }

        var endpointSlices = context.Request.Path.StartsWithSegments("/apis/discovery.k8s.io/v1/namespaces", out var rest)
            && rest.Value?.Split('/', StringSplitOptions.RemoveEmptyEntries) is [_, "endpointslices"] or [_, "endpointslices", _];
        await WriteStatusAsync(context, endpointSlices && !HttpMethods.IsGet(context.Request.Method)
            ? Status(StatusCodes.Status405MethodNotAllowed, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            : Status(StatusCodes.Status404NotFound, "NotFound", "the server could not find the requested resource")).ConfigureAwait(false);
    }

    /// <summary>A <c>Status</c> as the API server writes one for a failed request.</summary>
    private static StatusObject Status(int code, string reason, string message) => new("Status", "v1", new StatusMetadata(), "Failure", message, reason, code);

    /// <summary>
    /// Writes <paramref name="status"/> as the response, with its code as the HTTP status. (Not as a <see cref="V1Status"/>:
    /// KubernetesClient's converter for it reads but cannot write, it throws NotImplementedException.)
    /// </summary>
    private static async Task WriteStatusAsync(HttpContext context, StatusObject status)
    {
        context.Response.StatusCode = status.Code;
        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync(KubernetesJson.Serialize(status), context.RequestAborted).ConfigureAwait(false);
    }

    private void Record(string ns, V1EndpointSlice slice, string type)
    {
        var line = KubernetesJson.Serialize(new WatchLine(type, slice));
        _history.Add(new HistoryEntry(long.Parse(slice.Metadata.ResourceVersion, CultureInfo.InvariantCulture), ns, slice, line));
        foreach (var watcher in _watchers.Where(w => w.Ns == ns && w.Selection.Matches(ns, slice)))
        {
            watcher.Lines.Writer.TryWrite(line);
        }
    }

    private string NextResourceVersion() => (++_resourceVersion).ToString(CultureInfo.InvariantCulture);

    private static string? ParseServiceSelector(string selector)
    {
        if (string.IsNullOrEmpty(selector))
        {
            return null;
        }

        var parts = selector.Split('=', 2);
        return parts.Length == 2 && parts[0] == ServiceLabel ? parts[1] : "<unsupported selector>";
    }

    private static bool Matches(V1EndpointSlice slice, string? service) =>
        service is null || (slice.Metadata?.Labels?.TryGetValue(ServiceLabel, out var value) == true && value == service);

    /// <summary>
    /// A slice as an item of a LIST: without apiVersion and kind, which kube-apiserver leaves out of the items of a
    /// built-in type's list (only the list says <c>EndpointSliceList</c>; kubernetes/kubernetes#3030), while a GET and
    /// every watch event's object carry them.
    /// </summary>
    private static V1EndpointSlice ListItem(V1EndpointSlice slice)
    {
        var item = Clone(slice);
        item.ApiVersion = null;
        item.Kind = null;
        return item;
    }

    private static V1EndpointSlice Clone(V1EndpointSlice slice) =>
        KubernetesJson.Deserialize<V1EndpointSlice>(KubernetesJson.Serialize(slice));

    private sealed record HistoryEntry(long ResourceVersion, string Ns, V1EndpointSlice Slice, string Line);

    /// <summary>What a LIST or WATCH selects: the Service's label (null: any) and every field term.</summary>
    private sealed record Selection(string? Service, IReadOnlyList<FieldTerm> Fields)
    {
        public bool Matches(string ns, V1EndpointSlice slice) =>
            SimulatedKubernetesApi.Matches(slice, Service) && Fields.All(term => term.Matches(ns, slice));
    }

    /// <summary>
    /// One term of a field selector, as apimachinery's fields.ParseSelector reads it (<c>field=value</c>,
    /// <c>field==value</c>, <c>field!=value</c>; terms joined by commas, all must hold). An EndpointSlice has no field
    /// label conversion of its own, so only the generic <c>metadata.name</c> and <c>metadata.namespace</c> are known
    /// (runtime.DefaultMetaV1FieldSelectorConversion). Backslash escapes are not read.
    /// </summary>
    private sealed record FieldTerm(string Field, bool Equal, string Value)
    {
        public bool Matches(string ns, V1EndpointSlice slice) =>
            string.Equals(Field == "metadata.name" ? slice.Metadata?.Name : ns, Value, StringComparison.Ordinal) == Equal;

        /// <summary>Parses <paramref name="selector"/>, or gives the API server's message for why it is refused.</summary>
        public static bool TryParse(string selector, out IReadOnlyList<FieldTerm> terms, [System.Diagnostics.CodeAnalysis.NotNullWhen(false)] out string? error)
        {
            var parsed = new List<FieldTerm>();
            terms = parsed;
            error = null;
            foreach (var part in selector.Split(','))
            {
                if (part.Length == 0)
                {
                    continue;
                }

                // The first position where an operator starts; there, != before == before =.
                var at = part.IndexOfAny(['!', '=']);
                while (at >= 0 && part[at] == '!' && !part.AsSpan(at).StartsWith("!="))
                {
                    at = part.IndexOfAny(['!', '='], at + 1);
                }

                if (at < 0)
                {
                    error = $"invalid selector: '{selector}'; can't understand '{part}'";
                    return false;
                }

                var op = part.AsSpan(at).StartsWith("!=") ? "!=" : part.AsSpan(at).StartsWith("==") ? "==" : "=";
                var equal = op != "!=";
                var field = part[..at];
                if (field is not ("metadata.name" or "metadata.namespace"))
                {
                    error = $"\"{field}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"";
                    return false;
                }

                parsed.Add(new FieldTerm(field, equal, part[(at + op.Length)..]));
            }

            return true;
        }

        /// <summary>The one name a selector requires (fields.Selector.RequiresExactMatch("metadata.name")), or null.</summary>
        public static string? ExactName(string selector) =>
            TryParse(selector, out var terms, out _) && terms.FirstOrDefault(t => t.Field == "metadata.name" && t.Equal) is { Value.Length: > 0 } term
                ? term.Value
                : null;
    }

    /// <summary>
    /// The JSON of a failure <c>Status</c> (<c>meta/v1</c>), field for field and in the order the API server writes it
    /// (<c>details</c>, when there are any, between <c>reason</c> and <c>code</c>).
    /// </summary>
    private sealed record StatusObject(
        [property: System.Text.Json.Serialization.JsonPropertyName("kind")] string Kind,
        [property: System.Text.Json.Serialization.JsonPropertyName("apiVersion")] string ApiVersion,
        [property: System.Text.Json.Serialization.JsonPropertyName("metadata")] StatusMetadata Metadata,
        [property: System.Text.Json.Serialization.JsonPropertyName("status")] string Status,
        [property: System.Text.Json.Serialization.JsonPropertyName("message")] string Message,
        [property: System.Text.Json.Serialization.JsonPropertyName("reason")] string Reason,
        [property: System.Text.Json.Serialization.JsonPropertyName("code"), System.Text.Json.Serialization.JsonPropertyOrder(2)] int Code)
    {
        /// <summary>Which object the failure is about (a NotFound for a named object); left out of the JSON when null.</summary>
        [System.Text.Json.Serialization.JsonPropertyName("details")]
        [System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
        [System.Text.Json.Serialization.JsonPropertyOrder(1)]
        public StatusDetails? Details { get; init; }
    }

    /// <summary>
    /// A Status's <c>details</c>: the object's name (left out when the request named none), its API group and its resource
    /// (plural), as the API server writes them.
    /// </summary>
    private sealed record StatusDetails(
        [property: System.Text.Json.Serialization.JsonPropertyName("name"), System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)] string? Name,
        [property: System.Text.Json.Serialization.JsonPropertyName("group")] string Group,
        [property: System.Text.Json.Serialization.JsonPropertyName("kind")] string Kind);

    /// <summary>A Status's empty <c>metadata</c>: <c>{}</c>.</summary>
    private sealed record StatusMetadata;

    private sealed record WatchLine(
        [property: System.Text.Json.Serialization.JsonPropertyName("type")] string Type,
        [property: System.Text.Json.Serialization.JsonPropertyName("object")] object Object);

    private sealed class Watcher(string ns, Selection selection, bool bookmarks)
    {
        public string Ns { get; } = ns;

        public Selection Selection { get; } = selection;

        public bool Bookmarks { get; } = bookmarks;

        public Channel<string> Lines { get; } = Channel.CreateUnbounded<string>();
    }

    private void RemoveMirror(EndpointMirror mirror)
    {
        lock (_lock)
        {
            _mirrors.Remove(mirror);
        }
    }

    /// <summary>
    /// Follows one cluster: on every change notification, publishes what changed. Reconciliation runs under its own lock
    /// and reads the cluster's state inside it, so the last reconciliation always reflects the latest state.
    /// </summary>
    private sealed class EndpointMirror(SimulatedKubernetesApi api, SimulatedCluster cluster, string service, string ns, string portName) : IDisposable
    {
        private readonly Lock _gate = new();
        private readonly Dictionary<string, string> _published = new(StringComparer.Ordinal);
        private bool _disposed;

        public void Start()
        {
            cluster.EndpointsChanged += Reconcile;
            Reconcile();
        }

        public void Dispose()
        {
            cluster.EndpointsChanged -= Reconcile;
            lock (_gate)
            {
                _disposed = true;
            }

            api.RemoveMirror(this);
        }

        private void Reconcile()
        {
            lock (_gate)
            {
                if (_disposed)
                {
                    return;
                }

                var pods = cluster.Pods.Where(p => p.State is SimulatedPodState.Running or SimulatedPodState.Terminating).ToList();
                var wanted = new HashSet<string>(StringComparer.Ordinal);
                foreach (var pod in pods)
                {
                    IPEndPoint endPoint;
                    try
                    {
                        endPoint = cluster.EnsureNetworkEndPoint(pod);
                    }
                    catch (ObjectDisposedException)
                    {
                        return; // The cluster is shutting down.
                    }

                    var name = $"{service}-{pod.Name}";
                    wanted.Add(name);
                    var conditions = new V1EndpointConditions
                    {
                        Ready = pod.IsReady,
                        Serving = pod.IsServing,
                        Terminating = pod.State == SimulatedPodState.Terminating,
                    };
                    var state = $"{endPoint.Port}/{conditions.Ready}/{conditions.Serving}/{conditions.Terminating}";
                    if (_published.TryGetValue(name, out var published) && published == state)
                    {
                        continue;
                    }

                    api.Apply(ns, CreateSlice(name, pod, endPoint.Port, conditions));
                    _published[name] = state;
                }

                foreach (var name in _published.Keys.Where(n => !wanted.Contains(n)).ToList())
                {
                    api.Delete(ns, name);
                    _published.Remove(name);
                }
            }
        }

        private V1EndpointSlice CreateSlice(string name, SimulatedPod pod, int port, V1EndpointConditions conditions) => new()
        {
            ApiVersion = "discovery.k8s.io/v1",
            Kind = "EndpointSlice",
            Metadata = new V1ObjectMeta
            {
                Name = name,
                Labels = new Dictionary<string, string>
                {
                    [ServiceLabel] = service,
                    ["endpointslice.kubernetes.io/managed-by"] = "connectionrefresh-testing",
                },
            },
            AddressType = "IPv4",
            Ports = [new Discoveryv1EndpointPort { Name = portName, Port = port, Protocol = "TCP" }],
            Endpoints =
            [
                new V1Endpoint
                {
                    Addresses = ["127.0.0.1"],
                    Conditions = conditions,
                    TargetRef = new V1ObjectReference { Kind = "Pod", Name = pod.Name, NamespaceProperty = ns },
                },
            ],
        };
    }
}
