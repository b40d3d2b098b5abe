using System.Net;
using System.Security.Authentication;
using Grpc.Core;
using Grpc.Net.Client.Balancer;
using Grpc.Net.Client.Configuration;
using k8s;
using k8s.Autorest;
using k8s.Exceptions;
using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// Resolves one <c>kubernetes:</c> target: LIST the Service's EndpointSlices, WATCH from the list's
/// resourceVersion (with bookmarks), publish the ready endpoints (one per pod, see <see cref="EndpointSelector"/>) on every change; relist on
/// <c>410 Gone</c>, every resync interval, and on a <see cref="Refresh"/> that finds no live watch (a live watch
/// already delivers every change); keep the last known endpoints and reconnect with jittered exponential backoff while
/// the API server is unreachable. Every address list carries the service config it was given, if any (round_robin for a
/// channel that names no policy, see <see cref="KubernetesResolverFactory.Create"/>).
/// Thread-safety: one background loop owns the slices, the backoff and the published set; the only
/// state shared with callers (<see cref="Refresh"/>, <see cref="Dispose(bool)"/>) is the refresh flag,
/// the current watch's cancellation source and its last sign of life, all guarded by <c>_lock</c>, and the disposed flag: the listener is
/// called under <c>_listenerLock</c>, which <see cref="Dispose(bool)"/> also takes, so once Dispose has returned the
/// listener is never called again (grpc-dotnet disposes the balancer right after the resolver; a late result would
/// create subchannels, and connections, for a disposed channel).
/// </summary>
internal sealed class KubernetesResolver : Resolver
{
    // grpc-dotnet's own resolvers set this attribute to choose the :authority/Host of calls; without it the
    // pod IP would be used. Cert SANs and virtual hosts name the Service, so use its cluster DNS name.
    private static readonly BalancerAttributesKey<string> HostOverrideKey = new("HostOverride");

    private readonly KubernetesTarget _target;
    private readonly string _namespace;
    private readonly IEndpointSliceClient _client;
    private readonly KubernetesResolverOptions _options;
    private readonly KubernetesResolverMetrics _metrics;
    private readonly KubernetesResolverMetrics.ResolverGauges _gauges;
    private readonly TimeProvider _time;
    private readonly Func<double> _random;
    private readonly ILogger _logger;
    private readonly EndpointSliceStore _store = new();
    private readonly EndpointSelector _selector;
    private readonly CancellationTokenSource _disposeCts = new();
    private readonly CancellationTokenRegistration _stopping;
    private readonly ServiceConfig? _serviceConfig;
    private readonly Lock _lock = new();
    private readonly Lock _listenerLock = new();

    private Action<ResolverResult>? _listener;
    private Task _loop = Task.CompletedTask;
    private CancellationTokenSource? _watchCts;
    private long _watchActivityTimestamp; // TimeProvider timestamp: monotonic, unlike the wall clock
    private bool _refreshRequested;
    private volatile bool _disposed;
    private IReadOnlyList<ResolvedEndpoint>? _published;
    private string? _publishedDetail; // Why _published is empty, as the published failure says; null when it is not.
    private int _lastSkippedSlices;
    private bool _misconfigurationLogged; // Owned by the loop.
    private bool _noSlicesLogged; // Owned by the loop.
    // Elapsed time (resync, healthy watch, refresh interval) is measured with TimeProvider timestamps, which are monotonic:
    // a wall clock stepped back (NTP, VM resume) would otherwise stretch a wait by the step.
    private long _lastListTimestamp;

    public KubernetesResolver(
        KubernetesTarget target,
        string ns,
        IEndpointSliceClient client,
        KubernetesResolverOptions options,
        KubernetesResolverMetrics metrics,
        TimeProvider time,
        Func<double> random,
        ILogger logger,
        ServiceConfig? serviceConfig = null,
        CancellationToken stopping = default)
    {
        _target = target;
        _namespace = ns;
        _client = client;
        _options = options;
        _metrics = metrics;
        _time = time;
        _random = random;
        _logger = logger;
        _serviceConfig = serviceConfig;
        _selector = new EndpointSelector(target, options.IncludeTerminatingEndpoints);
        _gauges = metrics.Register(target, ns);
        // The factory's disposal stops the loop too: Grpc.Net.ClientFactory never disposes its channels (and so their
        // resolvers), and the API client the loop uses is disposed with the factory.
        _stopping = stopping.Register(static state => ((CancellationTokenSource)state!).Cancel(), _disposeCts);
    }

    /// <summary>The background loop; completes after <see cref="Resolver.Dispose()"/>. For tests.</summary>
    internal Task Completion => _loop;

    /// <summary>The namespace this resolver watches.</summary>
    internal string Namespace => _namespace;

    /// <summary>The Service this resolver watches.</summary>
    internal string Service => _target.Service;

    /// <summary>
    /// The <see cref="TimeProvider.GetTimestamp"/> at which the current watch last showed life (started, or delivered an
    /// event or a bookmark). For tests.
    /// </summary>
    internal long WatchActivityTimestamp
    {
        get
        {
            lock (_lock)
            {
                return _watchActivityTimestamp;
            }
        }
    }

    public override void Start(Action<ResolverResult> listener)
    {
        ArgumentNullException.ThrowIfNull(listener);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Interlocked.CompareExchange(ref _listener, listener, null) is not null)
        {
            throw new InvalidOperationException("The resolver has already been started.");
        }

        KubernetesResolverLog.Started(_logger, _target.Service, _namespace, _target.PortText);
        _gauges.Start();
        _loop = Task.Run(RunAsync);
    }

    /// <summary>
    /// Called by grpc-dotnet's balancer whenever a subchannel goes idle or fails (for example after a server-side max
    /// connection age closed its connection with a GOAWAY). A watch that showed life within
    /// <see cref="KubernetesResolverDefaults.WatchLivenessWindow"/> already delivers every change, so it answers the
    /// request: nothing is relisted. Otherwise (first LIST pending, backing off after errors, or a watch silent for
    /// longer than the window, which may have stopped delivering) the slices are relisted, at most once per
    /// <see cref="KubernetesResolverDefaults.MinRefreshInterval"/>.
    /// </summary>
    public override void Refresh()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        TimeSpan? sinceActivity = null;
        lock (_lock)
        {
            var since = _time.GetElapsedTime(_watchActivityTimestamp);
            if (_watchCts is not null && since < KubernetesResolverDefaults.WatchLivenessWindow)
            {
                sinceActivity = since;
            }
            else
            {
                _refreshRequested = true;
                _watchCts?.Cancel();
            }
        }

        if (sinceActivity is { } answered)
        {
            KubernetesResolverLog.RefreshAnsweredByWatch(_logger, _target.Service, _namespace, answered);
        }
        else
        {
            KubernetesResolverLog.RefreshRequested(_logger, _target.Service, _namespace, KubernetesResolverDefaults.WatchLivenessWindow);
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && !_disposed)
        {
            lock (_listenerLock)
            {
                // Waits for a listener call in progress; none starts after this.
                _disposed = true;
            }

            _disposeCts.Cancel();
            _stopping.Dispose();
            _gauges.Dispose(); // Now, not when the loop ends: a collection right after Dispose reports nothing for it.
        }

        base.Dispose(disposing);
    }

    private async Task RunAsync()
    {
        var cancellationToken = _disposeCts.Token;
        var backoff = new ReconnectBackoff(_options.InitialBackoff, _options.MaxBackoff, _random);
        try
        {
            while (!cancellationToken.IsCancellationRequested)
            {
                try
                {
                    await ListAndWatchAsync(backoff, cancellationToken).ConfigureAwait(false);
                }
                catch (Exception ex) when (!cancellationToken.IsCancellationRequested)
                {
                    _metrics.Error(_target, _namespace, ex);
                    var delay = backoff.Next();
                    LogFailure(ex, backoff.Attempt, delay);
                    if (_published is null)
                    {
                        // Nothing known yet: fail calls fast instead of leaving them waiting. Once endpoints are
                        // known they stay in use; an unreachable API server says nothing about the pods.
                        Notify(ResolverResult.ForFailure(new Status(StatusCode.Unavailable, FailureDetail(ex), ex)));
                    }

                    await Task.Delay(delay, _time, cancellationToken).ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Disposed.
        }
        catch (Exception ex)
        {
            KubernetesResolverLog.LoopFailed(_logger, _target.Service, _namespace, ex);
        }
        finally
        {
            // Also stopped by the factory's disposal (not this resolver's): a stopped resolver reports nothing.
            _gauges.Dispose();
            KubernetesResolverLog.Stopped(_logger, _target.Service, _namespace);
        }
    }

    private async Task ListAndWatchAsync(ReconnectBackoff backoff, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            _refreshRequested = false;
        }

        _lastListTimestamp = _time.GetTimestamp();
        var snapshot = await _client.ListAsync(_namespace, _target.Service, cancellationToken).ConfigureAwait(false);
        if (_published is null)
        {
            // grpc-dotnet calls Refresh() right after Start(), possibly while this first LIST runs: nothing was published
            // before it, so no balancer can have asked for anything this LIST does not answer.
            lock (_lock)
            {
                _refreshRequested = false;
            }
        }

        _store.ReplaceAll(snapshot.Slices);
        Publish();

        var resourceVersion = snapshot.ResourceVersion;
        var listed = _time.GetTimestamp();
        var resyncAfter = ReconnectBackoff.Jitter(_options.ResyncInterval, _random);
        // Whether this watch resumes from a resourceVersion an earlier (healthy) watch delivered rather than the LIST's own.
        var resumed = false;
        while (true)
        {
            var remaining = resyncAfter - _time.GetElapsedTime(listed);
            if (remaining <= TimeSpan.Zero)
            {
                Restarted("resync");
                return;
            }

            using var resyncCts = new CancellationTokenSource(remaining, _time);
            using var watchCts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, resyncCts.Token);
            lock (_lock)
            {
                if (_refreshRequested)
                {
                    break;
                }

                _watchCts = watchCts;
                _watchActivityTimestamp = _time.GetTimestamp();
            }

            var started = _time.GetTimestamp();
            var events = 0;
            try
            {
                await foreach (var change in _client.WatchAsync(_namespace, _target.Service, resourceVersion, remaining, watchCts.Token).ConfigureAwait(false))
                {
                    events++;
                    lock (_lock)
                    {
                        // Recorded before the event is applied: whoever sees its effect also sees this sign of life.
                        _watchActivityTimestamp = _time.GetTimestamp();
                    }

                    resourceVersion = Apply(change) ?? resourceVersion;
                }
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested && watchCts.IsCancellationRequested)
            {
                ResetIfHealthy(backoff, started, events);
                if (resyncCts.IsCancellationRequested)
                {
                    Restarted("resync");
                    return;
                }

                break; // Refresh() cancelled the watch.
            }
            catch (ResourceVersionExpiredException) when (resumed || IsHealthy(started, events))
            {
                // Expected now and then: a resumed watch's resourceVersion was compacted, or a restarted API server's watch
                // cache starts later (a 410 then comes at once). Relist at once. A 410 for the LIST's own resourceVersion on
                // a watch that showed no life is not expected: it backs off like any error.
                backoff.Reset();
                Restarted("expired");
                return;
            }
            catch (Exception) when (!cancellationToken.IsCancellationRequested)
            {
                ResetIfHealthy(backoff, started, events);
                Restarted("error"); // After the backoff (RunAsync), relisted and watched again.
                throw;
            }
            finally
            {
                lock (_lock)
                {
                    _watchCts = null;
                }
            }

            // The server closed the watch (its timeout): continue from the last resourceVersion.
            if (!IsHealthy(started, events))
            {
                Restarted("error");
                throw new IOException("The Kubernetes API server closed the EndpointSlice watch at once.");
            }

            backoff.Reset();
            Restarted("closed");
            resumed = true;
        }

        // Refresh() found no live watch (this one was silent for longer than WatchLivenessWindow, or the request came
        // between two watches): relist, at most once per MinRefreshInterval.
        Restarted("refresh");
        var wait = KubernetesResolverDefaults.MinRefreshInterval - _time.GetElapsedTime(_lastListTimestamp);
        if (wait > TimeSpan.Zero)
        {
            await Task.Delay(wait, _time, cancellationToken).ConfigureAwait(false);
        }
    }

    private string? Apply(EndpointSliceEvent change)
    {
        switch (change.Type)
        {
            case WatchEventType.Added:
            case WatchEventType.Modified:
                _store.Upsert(change.Slice);
                Publish();
                break;
            case WatchEventType.Deleted:
                _store.Remove(change.Slice);
                Publish();
                break;
            case WatchEventType.Bookmark:
            default:
                break;
        }

        return change.Slice.Metadata?.ResourceVersion;
    }

    private void Publish()
    {
        var endpoints = _selector.Select(_store.Slices, out var skipped, out var skippedPorts, out var listed);
        if (skipped > 0 && skipped != _lastSkippedSlices)
        {
            // Says which ports there are and how to name one: "(only port)" read as if the target had asked for a port
            // of that name, and a typo in a port name was only visible by comparing with the Service by hand.
            var ports = skippedPorts.Count == 0 ? "none" : string.Join(", ", skippedPorts);
            var (port, hint) = _target.PortName is { } name
                ? ($"'{name}'",
                    $"Name one of the Service's ports in the target (kubernetes:///{_target.Service}.{_namespace}:<port name>), or give the pods' port number.")
                : ("(the target names no port)",
                    $"A target without a port needs a Service with exactly one TCP port: name one (kubernetes:///{_target.Service}.{_namespace}:<port name>).");
            KubernetesResolverLog.PortNotFound(_logger, _target.Service, _namespace, skipped, port, ports, hint);
        }

        _lastSkippedSlices = skipped;
        if (_store.Count == 0 && !_noSlicesLogged)
        {
            // Calls then fail with NoEndpointsDetail's status; the usual cause is a target naming the wrong service or
            // namespace (without one in the target, the pod's own, or the kubeconfig context's, is used).
            KubernetesResolverLog.NoEndpointSlices(_logger, _target.Service, _namespace, KubernetesResolverDefaults.ServiceNameLabel, TargetNamespaceText());
        }

        _noSlicesLogged = _store.Count == 0;
        _gauges.Update(endpoints.Count, _store.Count, _time.GetUtcNow());
        // An empty list is published as a failure that says why: grpc-dotnet's balancers (2.85) treat an empty list and a
        // failed resolution alike (with no ready subchannel they drop the subchannels and fail picks with the status, which
        // wait-for-ready calls wait out; with one they ignore both; neither asks to re-resolve), but for an empty list
        // their status names neither the service nor a cause. The cause can change while the list stays empty: compared too.
        var detail = endpoints.Count == 0 ? NoEndpointsDetail(skipped, skippedPorts, listed) : null;
        if (_published is not null && _published.SequenceEqual(endpoints) && detail == _publishedDetail)
        {
            return;
        }

        _published = endpoints;
        _publishedDetail = detail;
        KubernetesResolverLog.EndpointsUpdated(_logger, _target.Service, _namespace, endpoints.Count, _store.Count);
        if (detail is not null)
        {
            Notify(ResolverResult.ForFailure(new Status(StatusCode.Unavailable, detail)));
            return;
        }

        var addresses = new BalancerAddress[endpoints.Count];
        for (var i = 0; i < endpoints.Count; i++)
        {
            var address = new BalancerAddress(endpoints[i].Host, endpoints[i].Port);
            address.Attributes.Set(HostOverrideKey, $"{_target.Service}.{_namespace}.svc:{endpoints[i].Port}");
            addresses[i] = address;
        }

        // A failure cannot carry a service config (ResolverResult.ForFailure): a channel whose first result was one starts
        // on pick_first and moves to round_robin once this result's balancer has a ready pod (ChildHandlerLoadBalancer).
        Notify(ResolverResult.ForResult(addresses, _serviceConfig, null));
    }

    private string TargetNamespaceText() => _target.Namespace is null
        ? $"'{_namespace}' (the target names none, so the service account's or kubeconfig context's namespace, else 'default', is used)"
        : $"'{_namespace}'";

    /// <summary>
    /// The status detail of calls while the Service has no usable endpoint: which service, namespace and port, and the most
    /// likely reason, from what the EndpointSlices hold.
    /// </summary>
    private string NoEndpointsDetail(int skippedSlices, IReadOnlyList<string> skippedPorts, int listedEndpoints)
    {
        var port = _target.PortName is { } name ? $"port '{name}'"
            : _target.PortNumber is { } number ? $"port {number}"
            : "its only port (the target names no port)";
        var what = $"The Kubernetes resolver found no ready endpoint for service '{_target.Service}' in namespace '{_namespace}', {port}: ";
        if (_store.Count == 0)
        {
            return what + $"no EndpointSlice is labelled {KubernetesResolverDefaults.ServiceNameLabel}={_target.Service}. " +
                $"Does Service '{_target.Service}' exist in namespace {TargetNamespaceText()}? " +
                "(A Service without a selector has EndpointSlices only if someone creates them.)";
        }

        if (listedEndpoints == 0 && skippedSlices > 0)
        {
            var ports = skippedPorts.Count == 0 ? "none" : string.Join(", ", skippedPorts);
            return what + $"no EndpointSlice of the Service has a matching TCP port (their ports: {ports}). " +
                $"Name one of them in the target (kubernetes:///{_target.Service}.{_namespace}:<port name>), or give the pods' port number.";
        }

        if (listedEndpoints == 0)
        {
            return what + $"its {_store.Count} EndpointSlice(s) list no endpoints: no pod matches the Service's selector (scaled to zero, " +
                "or a selector that names no pod's labels).";
        }

        return what + $"its EndpointSlices list {listedEndpoints} endpoint(s), none of them ready: the pods are starting, failing their " +
            "readiness probe, or shutting down.";
    }

    private void Notify(ResolverResult result)
    {
        lock (_listenerLock)
        {
            if (!_disposed)
            {
                _listener!(result);
            }
        }
    }

    /// <summary>
    /// Why calls fail while nothing is known. A refusal (401, 403) sends the user to the credentials or the RBAC rule, not
    /// to the network: "could not be reached" was misleading for the most common setup mistake, a missing Role. So it was
    /// for failures before any request left the process (a token, CA or kubeconfig tokenFile missing or unreadable, an
    /// <c>exec</c> credential plugin that fails) and for a server certificate that was rejected (the server was reached).
    /// </summary>
    private string FailureDetail(Exception error)
    {
        var what = $"service '{_target.Service}' in namespace '{_namespace}'";
        switch ((error as HttpOperationException)?.Response?.StatusCode)
        {
            case HttpStatusCode.Unauthorized:
                return $"The Kubernetes API server rejected the resolver's credentials (401 Unauthorized) when listing the EndpointSlices of {what}: " +
                    $"check the bearer token (service account token or kubeconfig user). {error.Message}";
            case HttpStatusCode.Forbidden:
                return $"The Kubernetes API server forbade listing the EndpointSlices of {what} (403 Forbidden): the client's identity needs the verbs " +
                    $"'list' and 'watch' on 'endpointslices' (API group 'discovery.k8s.io') in namespace '{_namespace}'. {error.Message}";
        }

        if (error is HttpOperationException { Response: { } response })
        {
            // Reached, and answered with an error: not a network problem. A 404 is an API server without EndpointSlices
            // (before 1.21) or a URL that is not an API server's.
            var hint = response.StatusCode == HttpStatusCode.NotFound
                ? " (the EndpointSlice API discovery.k8s.io/v1 is served by Kubernetes API servers of version 1.21 or later: check that the URL is one)"
                : "";
            return $"The Kubernetes API server answered {(int)response.StatusCode} {response.StatusCode} when listing the EndpointSlices of {what}{hint}: {error.Message}";
        }

        if (error is ServiceAccountMissingException)
        {
            return $"The Kubernetes resolver cannot resolve {what}: {error.Message}";
        }

        if (Find<AuthenticationException>(error) is { } tls)
        {
            return $"The Kubernetes API server's TLS certificate was rejected when listing the EndpointSlices of {what}: {tls.Message} " +
                $"It is verified against the service account's ca.crt in '{_options.ServiceAccountPath}' in a pod (with ApiServer too, " +
                "when that file exists; otherwise the system's roots), and with a kubeconfig against its cluster's certificate-authority.";
        }

        if (FindLocal(error) is { } local)
        {
            return $"The Kubernetes resolver could not send its request for the EndpointSlices of {what} (nothing was sent to the API server): {local.Message}";
        }

        return $"The Kubernetes API server could not be reached to resolve {what}: {error.Message}";
    }

    /// <summary>A failure before any request left the process: a credential or CA file, or a credential plugin.</summary>
    private static Exception? FindLocal(Exception error)
    {
        for (Exception? e = error; e is not null; e = e.InnerException)
        {
            if (e is FileNotFoundException or DirectoryNotFoundException or InvalidDataException or UnauthorizedAccessException or KubeConfigException)
            {
                return e;
            }
        }

        return null;
    }

    private static T? Find<T>(Exception error)
        where T : Exception
    {
        for (Exception? e = error; e is not null; e = e.InnerException)
        {
            if (e is T found)
            {
                return found;
            }
        }

        return null;
    }

    /// <summary>
    /// A failed attempt: a warning each time, except for a configuration mistake (<see cref="ServiceAccountMissingException"/>),
    /// which is logged once as an error that says what to fix, and then at Debug per retry: a warning every few seconds
    /// for the life of the pod would bury it, and retrying does not mean the resolver expects it to fix itself.
    /// </summary>
    private void LogFailure(Exception error, int attempt, TimeSpan delay)
    {
        if (error is not ServiceAccountMissingException)
        {
            KubernetesResolverLog.RequestFailed(_logger, _target.Service, _namespace, attempt, _published?.Count ?? 0, delay, error);
        }
        else if (!_misconfigurationLogged)
        {
            _misconfigurationLogged = true;
            KubernetesResolverLog.Misconfigured(_logger, _target.Service, _namespace, error.Message, _options.MaxBackoff);
        }
        else
        {
            KubernetesResolverLog.StillMisconfigured(_logger, _target.Service, _namespace, attempt, delay, error);
        }
    }

    private bool IsHealthy(long startedTimestamp, int events) =>
        events > 0 || _time.GetElapsedTime(startedTimestamp) >= KubernetesResolverDefaults.HealthyWatchDuration;

    private void ResetIfHealthy(ReconnectBackoff backoff, long started, int events)
    {
        if (IsHealthy(started, events))
        {
            backoff.Reset();
        }
    }

    private void Restarted(string reason)
    {
        _metrics.WatchRestarted(_target, _namespace, reason);
        KubernetesResolverLog.WatchRestarting(_logger, _target.Service, _namespace, reason);
    }
}
