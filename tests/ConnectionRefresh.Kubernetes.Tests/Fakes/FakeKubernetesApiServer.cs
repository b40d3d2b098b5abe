using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Threading.Channels;
using k8s;
using k8s.Models;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>
/// An in-process Kubernetes API server (Kestrel on 127.0.0.1, port 0) for EndpointSlices only, speaking
/// the real wire format: <c>GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices</c> as a LIST
/// (JSON <c>EndpointSliceList</c> with <c>metadata.resourceVersion</c>) or, with <c>watch=true</c>, as a
/// chunked stream of newline-separated watch events from a resourceVersion (ADDED/MODIFIED/DELETED,
/// BOOKMARK when <c>allowWatchBookmarks=true</c>, ERROR 410 Gone for a compacted resourceVersion);
/// bearer tokens are checked (401 with a Status otherwise). An outage switch aborts every connection.
/// Thread-safe: state is guarded by a lock; watchers get their lines through channels.
/// </summary>
internal sealed class FakeKubernetesApiServer : IAsyncDisposable
{
    private const string ServiceLabel = "kubernetes.io/service-name";

    private readonly Lock _lock = new();
    private readonly Dictionary<(string Ns, string Name), V1EndpointSlice> _slices = [];
    private readonly List<HistoryEntry> _history = [];
    private readonly List<Watcher> _watchers = [];
    private readonly HashSet<string> _acceptedTokens = new(StringComparer.Ordinal);
    private readonly ConcurrentQueue<string> _seenTokens = new();
    private readonly ConcurrentDictionary<string, ConnectionContext> _connections = new();
    private readonly WebApplication _app;
    private long _resourceVersion = 1000;
    private long _compactedBelow;
    private volatile bool _outage;
    private int _listCount;
    private int _watchCount;

    private FakeKubernetesApiServer(WebApplication app) => _app = app;

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

    /// <summary>When true, 410 Gone is the HTTP status of the watch request instead of an ERROR event in the stream.</summary>
    public bool GoneAsHttpStatus { get; set; }

    public static async Task<FakeKubernetesApiServer> StartAsync(params string[] acceptedTokens)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        FakeKubernetesApiServer? server = null;
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
                    await next(connection);
                }
                finally
                {
                    server._connections.TryRemove(connection.ConnectionId, out _);
                }
            });
        }));
        var app = builder.Build();
        server = new FakeKubernetesApiServer(app);
        foreach (var token in acceptedTokens)
        {
            server._acceptedTokens.Add(token);
        }

        app.MapGet("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", (Func<HttpContext, string, Task>)server.HandleAsync);
        await app.StartAsync();
        server.Url = new Uri(app.Urls.Single());
        return server;
    }

    /// <summary>Replaces the accepted bearer tokens (a rotation revokes the old one).</summary>
    public void SetAcceptedTokens(params string[] tokens)
    {
        lock (_lock)
        {
            _acceptedTokens.Clear();
            _acceptedTokens.UnionWith(tokens);
        }
    }

    /// <summary>Creates or replaces a slice: ADDED or MODIFIED for watchers.</summary>
    public void Apply(string ns, V1EndpointSlice slice)
    {
        lock (_lock)
        {
            var key = (ns, slice.Metadata.Name);
            var type = _slices.ContainsKey(key) ? "MODIFIED" : "ADDED";
            var copy = Clone(slice);
            copy.Metadata.NamespaceProperty = ns;
            copy.Metadata.ResourceVersion = NextResourceVersion();
            _slices[key] = copy;
            Record(ns, copy, type);
        }
    }

    /// <summary>Deletes a slice: DELETED for watchers.</summary>
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

    public async ValueTask DisposeAsync()
    {
        CloseWatches();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    private async Task HandleAsync(HttpContext context, string ns)
    {
        var token = context.Request.Headers.Authorization.ToString();
        token = token.StartsWith("Bearer ", StringComparison.Ordinal) ? token["Bearer ".Length..] : "";
        _seenTokens.Enqueue(token);
        bool authorized;
        lock (_lock)
        {
            authorized = _acceptedTokens.Count == 0 || _acceptedTokens.Contains(token);
        }

        if (!authorized)
        {
            await WriteStatusAsync(context, 401, "Unauthorized", "Unauthorized");
            return;
        }

        var query = context.Request.Query;
        var service = ParseServiceSelector(query["labelSelector"].ToString());
        if (string.Equals(query["watch"], "true", StringComparison.OrdinalIgnoreCase))
        {
            await WatchAsync(context, ns, service, query["resourceVersion"].ToString(),
                string.Equals(query["allowWatchBookmarks"], "true", StringComparison.OrdinalIgnoreCase),
                int.TryParse(query["timeoutSeconds"], CultureInfo.InvariantCulture, out var timeout) ? timeout : 0);
        }
        else
        {
            await ListAsync(context, ns, service);
        }
    }

    private async Task ListAsync(HttpContext context, string ns, string? service)
    {
        V1EndpointSliceList list;
        lock (_lock)
        {
            list = new V1EndpointSliceList
            {
                ApiVersion = "discovery.k8s.io/v1",
                Kind = "EndpointSliceList",
                Metadata = new V1ListMeta { ResourceVersion = _resourceVersion.ToString(CultureInfo.InvariantCulture) },
                Items = _slices.Where(s => s.Key.Ns == ns && Matches(s.Value, service)).Select(s => Clone(s.Value)).ToList(),
            };
        }

        Interlocked.Increment(ref _listCount);
        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync(KubernetesJson.Serialize(list), context.RequestAborted);
    }

    private async Task WatchAsync(HttpContext context, string ns, string? service, string resourceVersion, bool bookmarks, int timeoutSeconds)
    {
        var from = long.TryParse(resourceVersion, CultureInfo.InvariantCulture, out var rv) ? rv : 0;
        var watcher = new Watcher(ns, service, bookmarks);
        bool gone;
        lock (_lock)
        {
            gone = from != 0 && from < _compactedBelow;
            if (!gone)
            {
                foreach (var entry in _history.Where(e => e.ResourceVersion > from && e.Ns == ns && Matches(e.Slice, service)))
                {
                    watcher.Lines.Writer.TryWrite(entry.Line);
                }

                _watchers.Add(watcher);
            }
        }

        Interlocked.Increment(ref _watchCount);
        var goneMessage = $"too old resource version: {from} ({_compactedBelow})";
        if (gone && GoneAsHttpStatus)
        {
            await WriteStatusAsync(context, 410, "Expired", goneMessage);
            return;
        }

        context.Response.ContentType = "application/json";
        await context.Response.StartAsync(context.RequestAborted);
        if (gone)
        {
            var status = new V1Status { ApiVersion = "v1", Kind = "Status", Status = "Failure", Code = 410, Reason = "Expired", Message = goneMessage };
            await context.Response.WriteAsync(KubernetesJson.Serialize(new WatchLine("ERROR", status)) + "\n", context.RequestAborted);
            return;
        }

        using var timeout = timeoutSeconds > 0 ? new CancellationTokenSource(TimeSpan.FromSeconds(timeoutSeconds)) : new CancellationTokenSource();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted, timeout.Token);
        try
        {
            await foreach (var line in watcher.Lines.Reader.ReadAllAsync(stop.Token))
            {
                await context.Response.WriteAsync(line + "\n", stop.Token);
                await context.Response.Body.FlushAsync(stop.Token);
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

    private static async Task WriteStatusAsync(HttpContext context, int code, string reason, string message)
    {
        context.Response.StatusCode = code;
        context.Response.ContentType = "application/json";
        var status = new V1Status { ApiVersion = "v1", Kind = "Status", Status = "Failure", Code = code, Reason = reason, Message = message };
        await context.Response.WriteAsync(KubernetesJson.Serialize(status), context.RequestAborted);
    }

    private void Record(string ns, V1EndpointSlice slice, string type)
    {
        var line = KubernetesJson.Serialize(new WatchLine(type, slice));
        _history.Add(new HistoryEntry(long.Parse(slice.Metadata.ResourceVersion, CultureInfo.InvariantCulture), ns, slice, line));
        foreach (var watcher in _watchers.Where(w => w.Ns == ns && Matches(slice, w.Service)))
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

    private static V1EndpointSlice Clone(V1EndpointSlice slice) =>
        KubernetesJson.Deserialize<V1EndpointSlice>(KubernetesJson.Serialize(slice));

    private sealed record HistoryEntry(long ResourceVersion, string Ns, V1EndpointSlice Slice, string Line);

    private sealed record WatchLine(
        [property: System.Text.Json.Serialization.JsonPropertyName("type")] string Type,
        [property: System.Text.Json.Serialization.JsonPropertyName("object")] object Object);

    private sealed class Watcher(string ns, string? service, bool bookmarks)
    {
        public string Ns { get; } = ns;

        public string? Service { get; } = service;

        public bool Bookmarks { get; } = bookmarks;

        public Channel<string> Lines { get; } = Channel.CreateUnbounded<string>();
    }
}
