using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using ConnectionRefresh.Testing.Internal;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Transport.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace ConnectionRefresh.Testing;

/// <summary>
/// A Kubernetes Service in a process: real Kestrel gRPC pods on loopback behind a ClusterIP that, like kube-proxy,
/// sends each new TCP connection to a uniformly random ready pod and keeps it there for its whole life. Pods can be
/// added, scaled, stopped gracefully, killed, black-holed and rolled; every pod counts its calls and connections.
/// </summary>
/// <example>
/// <code>
/// await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 3 });
/// using var channel = GrpcChannel.ForAddress(cluster.Address);
/// var reply = await new Greeter.GreeterClient(channel).SayHelloAsync(new HelloRequest { Name = "x" });
/// // reply.Instance is the pod that answered, e.g. "greeter-2".
/// await cluster.ScaleAsync(6);
/// </code>
/// </example>
/// <remarks>
/// Thread-safe: the pod list, pod states, readiness, the set of proxied connections and a rolling update's replica count
/// change only under one lock (a rolling update decides each step under it from the pods as they are then);
/// counters use <see cref="Interlocked"/>. Every member may be called concurrently.
/// </remarks>
public sealed class SimulatedCluster : IAsyncDisposable
{
    /// <summary>
    /// The most pods a cluster runs that are not terminating (its replica count), to bound the Kestrel servers, sockets and
    /// threads of one process. A rolling update may run one pod more (its surge pod), as a Deployment's maxSurge 1 does.
    /// Terminating pods are not counted: they leave within the grace period, and counting them made a rolling update
    /// of a cluster at the limit impossible.
    /// </summary>
    internal const int MaxPods = 64;
    private static readonly TimeSpan MinimumGraceAfterPreStop = TimeSpan.FromSeconds(2);

    private readonly Lock _gate = new();
    private readonly SimulatedClusterOptions _options;
    private readonly TimeProvider _time;
    private readonly long _startTimestamp;
    private readonly Random _random;
    private readonly List<SimulatedPod> _pods = [];
    private readonly List<SimulatedPod> _allPods = [];
    private readonly List<ClusterEvent> _events = [];
    private readonly HashSet<ProxiedConnection> _connections = [];
    // Iptables mode: which pod accepted the ClusterIP's connection from a source port (see ConnectIptablesAsync).
    private readonly ConcurrentDictionary<int, TaskCompletionSource<PodAttribution>> _attribution = new();
    private readonly CancellationTokenSource _shutdown = new();
    private readonly Socket _listener;
    private IptablesProxy? _iptables;
    // Iptables mode: completes once the rules for every pod black-holed so far are written (never faults); a new
    // connection waits for it before it connects, so one opened after BlackHole returned meets the pod's drop rule.
    private Task _unreachableRulesWritten = Task.CompletedTask;
    private Task _acceptLoop = Task.CompletedTask;
    private readonly List<Task> _podAcceptLoops = [];
    private int _podSequence;
    // The pod template's version: a rolling update bumps it and replaces the pods of older versions.
    private int _generation;
    // The replica count a running rolling update works toward (ScaleAsync and AddPodAsync change it); null when none runs.
    private int? _rolloutReplicas;
    // Changes whenever _rolloutReplicas is set outright (an update starts, ScaleAsync): an AddPodAsync that raised the
    // count and then failed takes its raise back only if nothing set the count since.
    private int _rolloutReplicasSet;
    private bool _disposed;
    private Task? _disposal;
    // Completed (and replaced) under the lock whenever a pod's state or readiness changes, or the cluster is disposed: what
    // a rolling update waits on while a new pod is not available (with a timer for the end of its minReadySeconds), instead
    // of polling.
    private TaskCompletionSource _podsChanged = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private SimulatedCluster(SimulatedClusterOptions options)
    {
        _options = options;
        _time = options.TimeProvider;
        _startTimestamp = _time.GetTimestamp();
        _random = options.RandomSeed is { } seed ? new Random(seed) : new Random();
        _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(1024);
        Address = new Uri($"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndPoint!).Port.ToString(CultureInfo.InvariantCulture)}");
    }

    /// <summary>The ClusterIP: <c>http://127.0.0.1:port</c>. Point any gRPC client here.</summary>
    public Uri Address { get; }

    /// <summary>How this cluster's ClusterIP balances connections.</summary>
    public KubeProxyMode ProxyMode => _options.ProxyMode;

    /// <summary>
    /// In <see cref="KubeProxyMode.Iptables"/> mode, the name of the network namespace the cluster created
    /// (<c>crsim-…</c>); otherwise <see langword="null"/>.
    /// </summary>
    public string? NetworkNamespace => _iptables?.NamespaceName;

    /// <summary>The iptables ClusterIP, for tests' hooks; null in userspace mode.</summary>
    internal IptablesProxy? Iptables => _iptables;

    /// <summary>
    /// In iptables mode, how long the ClusterIP side of a new connection waits for the pod side to say which pod the
    /// kernel picked before it gives up and resets the connection (default 10 s; tests shorten it).
    /// </summary>
    internal TimeSpan AttributionTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Test hook: in iptables mode, awaited by a pod's connection middleware before it attributes the connection.</summary>
    internal Func<Task>? BeforePodAttribution { get; set; }

    /// <summary>
    /// The pods in the cluster now, ready or not (running or terminating), in order of creation. A pod appears once it has
    /// started (its server listens, it turned ready); stopped and killed pods leave (they stay in <see cref="Summary"/>). A
    /// pod stopped or killed while it was starting never appears: it never had an address, nor was it an endpoint.
    /// </summary>
    public IReadOnlyList<SimulatedPod> Pods
    {
        get
        {
            lock (_gate)
            {
                return [.. _pods.Where(p => p.HasStarted)];
            }
        }
    }

    /// <summary>The pods that receive new connections now.</summary>
    public IReadOnlyList<SimulatedPod> ReadyPods
    {
        get
        {
            lock (_gate)
            {
                return [.. _pods.Where(p => p.IsReady)];
            }
        }
    }

    /// <summary>Connections the ClusterIP is carrying now (pinned to a pod or being connected).</summary>
    public int OpenConnections
    {
        get
        {
            lock (_gate)
            {
                return _connections.Count;
            }
        }
    }

    /// <summary>Starts a cluster with <see cref="SimulatedClusterOptions.Replicas"/> ready pods.</summary>
    /// <param name="options">
    /// The options; <see langword="null"/> for the defaults (3 pods, userspace ClusterIP). Copied and validated here, once:
    /// changing them after this call does not affect the cluster.
    /// </param>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range; the exception names it and its value.</exception>
    /// <exception cref="ArgumentException"><see cref="SimulatedClusterOptions.PodNamePrefix"/> is empty or <see cref="SimulatedClusterOptions.TimeProvider"/> is null.</exception>
    /// <param name="cancellationToken">Cancels the start.</param>
    /// <returns>The started cluster. Dispose it to stop every pod and close every socket.</returns>
    /// <exception cref="NotSupportedException"><see cref="KubeProxyMode.Iptables"/> was asked for where it cannot run; the message says why.</exception>
    public static async Task<SimulatedCluster> StartAsync(SimulatedClusterOptions? options = null, CancellationToken cancellationToken = default)
    {
        // A validated snapshot: later changes to the caller's object must not reach a running cluster unvalidated.
        options = options?.Snapshot() ?? new SimulatedClusterOptions();
        options.Validate();
        if (options.ProxyMode == KubeProxyMode.Iptables && !KubeProxySupport.IsIptablesSupported(out var reason))
        {
            throw new NotSupportedException($"KubeProxyMode.Iptables is not supported here: {reason}");
        }

        var cluster = new SimulatedCluster(options);
        try
        {
            if (options.ProxyMode == KubeProxyMode.Iptables)
            {
                cluster._iptables = await IptablesProxy.CreateAsync(cancellationToken).ConfigureAwait(false);
                await cluster._iptables.ApplyEndpointsAsync(() => new IptablesProxy.EndpointRules([], []), cancellationToken).ConfigureAwait(false);
            }

            cluster._acceptLoop = cluster.AcceptLoopAsync(cluster._listener, cluster.ConnectBackendAsync);
            await Task.WhenAll(Enumerable.Range(0, options.Replicas).Select(_ => cluster.AddPodAsync(cancellationToken))).ConfigureAwait(false);
            return cluster;
        }
        catch
        {
            await cluster.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Starts one more pod and makes it ready.</summary>
    /// <param name="cancellationToken">Cancels the start.</param>
    /// <returns>The new pod, ready.</returns>
    /// <exception cref="ObjectDisposedException">The cluster was disposed before or while the pod started (disposing cancels the start and waits for it).</exception>
    /// <remarks>During a rolling update the pod is built from the new template and raises the count the update ends with by one (unless the start fails or is cancelled).</remarks>
    /// <exception cref="InvalidOperationException">
    /// The cluster already runs 64 pods that are not terminating (or a rolling update works toward 64); or a concurrent
    /// scale-down (<see cref="ScaleAsync"/>, which counts and may stop pods still starting) stopped the pod while it started,
    /// so there is no ready pod to return: the pod has left by then, and never appeared in <see cref="Pods"/>. (Unlike
    /// <see cref="ScaleAsync"/>, which then completes, as it only works toward a count.)
    /// </exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled.</exception>
    public async Task<SimulatedPod> AddPodAsync(CancellationToken cancellationToken = default)
    {
        var created = new StrongBox<SimulatedPod?>();
        try
        {
            return await AddPodCoreAsync(byUser: true, cancellationToken, created).ConfigureAwait(false);
        }
        catch (OperationCanceledException ex) when (!cancellationToken.IsCancellationRequested && created.Value?.App is not null)
        {
            // Started, but stopped while starting (StartPodAsync's own cancellation); nobody cancelled this call. A start that
            // failed (App never set) keeps its own exception.
            throw new InvalidOperationException(
                $"{created.Value.Name} was stopped while starting by a concurrent scale-down: AddPodAsync has no ready pod to return.", ex);
        }
    }

    // byUser: one more replica, checked against MaxPods (during a rolling update, against the count it works toward).
    // Otherwise a rolling update, whose surge pod may go one above MaxPods.
    // created: receives the pod as soon as it exists, for a caller that must tell why its start failed.
    private async Task<SimulatedPod> AddPodCoreAsync(bool byUser, CancellationToken cancellationToken, StrongBox<SimulatedPod?>? created = null)
    {
        SimulatedPod pod;
        int? raised = null;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var running = _pods.Count(p => p.State is SimulatedPodState.Pending or SimulatedPodState.Running);
            var count = byUser ? _rolloutReplicas ?? running : running;
            if (count >= MaxPods + (byUser || _rolloutReplicas is null ? 0 : 1))
            {
                throw new InvalidOperationException(
                    $"Cannot add a pod: the cluster {(byUser && _rolloutReplicas is not null ? "rolls toward" : "runs")} {count} pods that are not terminating, and a simulated cluster runs 0 to {MaxPods} " +
                    "(terminating pods are not counted; a rolling update may run one more).");
            }

            if (byUser && _rolloutReplicas is not null)
            {
                _rolloutReplicas++;
                raised = _rolloutReplicasSet;
            }

            pod = CreatePod();
        }

        if (created is not null)
        {
            created.Value = pod;
        }

        return await StartCreatedPodAsync(pod, raised, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Creates a Pending pod of the current template (under the lock). Called in the same lock section that decided the
    /// pod is wanted, so every count taken after it (ScaleAsync, AddPodAsync's limit, a rolling update's step) includes it.
    /// </summary>
    private SimulatedPod CreatePod()
    {
        var pod = new SimulatedPod(this, $"{_options.PodNamePrefix}-{++_podSequence}")
        {
            Capacity = _options.MaxConcurrentCallsPerPod is { } limit ? new SemaphoreSlim(limit, limit) : null,
            Generation = _generation,
        };
        _pods.Add(pod);
        _allPods.Add(pod);
        return pod;
    }

    /// <summary>Starts a pod made by <see cref="CreatePod"/>, outside the lock; raised: see <see cref="AddPodCoreAsync"/>.</summary>
    private async Task<SimulatedPod> StartCreatedPodAsync(SimulatedPod pod, int? raised, CancellationToken cancellationToken)
    {
        try
        {
            return await StartPodAsync(pod, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (raised is not null && (cancellationToken.IsCancellationRequested || ex is not OperationCanceledException))
        {
            // The caller cancelled or the start failed: no pod was added, so the update's count goes back, as it would
            // have stayed without an update (a pod stopped or killed while starting is replaced instead, like any pod
            // lost during the update). Before StartCompleted, so that the update's next step sees it.
            lock (_gate)
            {
                if (_rolloutReplicas is not null && _rolloutReplicasSet == raised)
                {
                    _rolloutReplicas--;
                }
            }

            throw;
        }
        finally
        {
            pod.StartCompleted.TrySetResult();
        }
    }

    private async Task<SimulatedPod> StartPodAsync(SimulatedPod pod, CancellationToken cancellationToken)
    {
        WebApplication? app = null;
        try
        {
            app = BuildPod(pod);
            // Disposing the cluster cancels a start still running (e.g. a slow hosted service), and waits for it to end.
            using var start = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _shutdown.Token);
            await app.StartAsync(start.Token).ConfigureAwait(false);
            var address = app.Services.GetRequiredService<IServer>().Features.GetRequiredFeature<IServerAddressesFeature>().Addresses.First();
            pod.Address = new Uri(address);
            pod.EndPoint = new IPEndPoint(IPAddress.Loopback, pod.Address.Port);
        }
        catch
        {
            lock (_gate)
            {
                pod.State = SimulatedPodState.Killed;
                pod.RemovedAt = Elapsed();
                _pods.Remove(pod);
                SignalPodsChanged();
            }

            if (app is not null)
            {
                await app.DisposeAsync().ConfigureAwait(false);
            }

            ObjectDisposedException.ThrowIf(_disposed && !cancellationToken.IsCancellationRequested, this);
            throw;
        }

        bool started;
        lock (_gate)
        {
            pod.App = app;
            started = !_disposed && pod.State == SimulatedPodState.Pending;
            if (started)
            {
                pod.HasStarted = true;
                pod.State = SimulatedPodState.Running;
                pod.IsReady = true;
                pod.AddedAt = Elapsed();
                pod.ReadySince = pod.AddedAt;
                AddEvent(ClusterEventKind.PodStarted, pod, $"{pod.Name} started");
                SignalPodsChanged();
            }
        }

        if (!started)
        {
            // Disposed, stopped or killed while starting.
            pod.KillSwitch.Cancel();
            await StopAppAsync(pod).ConfigureAwait(false);
            ObjectDisposedException.ThrowIf(_disposed, this);
            throw new OperationCanceledException($"{pod.Name} was stopped while starting.");
        }

        await EndpointsChangedAsync().ConfigureAwait(false);
        return pod;
    }

    /// <summary>
    /// Scales to <paramref name="replicas"/> pods (starting or running; terminating pods do not count): adds pods in parallel,
    /// or stops pods gracefully, in this order: pods of an older template (left by a rolling update), then pods that are not
    /// ready, then the newest. Existing connections are not moved, as in Kubernetes.
    /// </summary>
    /// <remarks>
    /// During a <see cref="RollingUpdateAsync(TimeSpan, CancellationToken)"/>, as with a Deployment, the update goes on toward
    /// the new count and ends with exactly <paramref name="replicas"/> new pods: scaling down stops pods of the old template
    /// first, scaling up adds pods of the new one.
    /// </remarks>
    /// <param name="replicas">The number of pods wanted, 0 to 64 (terminating pods are not counted).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="replicas"/> is outside 0 to 64.</exception>
    /// <param name="cancellationToken">Cancels the operation.</param>
    /// <returns>
    /// A task that completes when the new pods are ready or the removed pods have exited. A pod it added that a later call
    /// (another <see cref="ScaleAsync"/>, <see cref="StopPodAsync"/>, <see cref="KillPodAsync"/>) stops while it starts does not
    /// fail it, as a Deployment scaled again simply works toward the newer count: the task then completes once that pod has left.
    /// Only <paramref name="cancellationToken"/> cancels it.
    /// </returns>
    public async Task ScaleAsync(int replicas, CancellationToken cancellationToken = default)
    {
        if (replicas is < 0 or > MaxPods)
        {
            throw new ArgumentOutOfRangeException(nameof(replicas), replicas, $"replicas must be between 0 and {MaxPods}.");
        }

        List<SimulatedPod> added;
        List<SimulatedPod> victims;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var current = _pods.Where(p => p.State is SimulatedPodState.Pending or SimulatedPodState.Running).ToList();
            AddEvent(ClusterEventKind.Scaled, null, $"scale {current.Count} → {replicas}");
            if (_rolloutReplicas is not null)
            {
                _rolloutReplicas = replicas;
                _rolloutReplicasSet++;
            }

            // Created here, under the lock that decided them (and started below): a rolling update starting or stepping
            // meanwhile counts them, and no other pod can take their place below MaxPods.
            added = [.. Enumerable.Range(0, Math.Max(0, replicas - current.Count)).Select(_ => CreatePod())];
            // Pods of an older template first (a rolling update would replace them anyway), then pods not ready, then the
            // newest. They turn Terminating here, under the lock, so a rolling update cannot pick one of them as well.
            victims = [.. current
                .OrderBy(p => p.Generation == _generation)
                .ThenBy(p => p.IsReady)
                .ThenByDescending(p => p.AddedAt)
                .Take(Math.Max(0, current.Count - replicas))
                .Where(BeginStop)];
        }

        AfterScaleDecided?.Invoke();
        await Task.WhenAll(
            victims.Select(p => CompleteStopAsync(p, changed: true, cancellationToken))
                .Concat(added.Select(p => StartScaledPodAsync(p, cancellationToken)))).ConfigureAwait(false);
    }

    private async Task StartScaledPodAsync(SimulatedPod pod, CancellationToken cancellationToken)
    {
        try
        {
            await StartCreatedPodAsync(pod, raised: null, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested && pod.App is not null)
        {
            // It started, but a newer decision stopped or killed it meanwhile (its stop has been awaited): the caller did not
            // cancel, and the cluster now works toward that newer decision. A start that failed (App never set) still throws.
        }
    }

    /// <summary>Test hook: runs after <see cref="ScaleAsync"/> has decided (and released the lock), before its pods start.</summary>
    internal Action? AfterScaleDecided { get; set; }

    /// <summary>
    /// Stops a pod gracefully, like a Kubernetes pod deletion: readiness off (new connections avoid it, the endpoints drop it),
    /// then the preStop hook (<see cref="SimulatedClusterOptions.PreStopDelay"/>, during which the pod still serves), then
    /// SIGTERM: Kestrel stops listening, sends GOAWAY on every connection and waits for running calls until
    /// <see cref="SimulatedClusterOptions.TerminationGracePeriod"/> (counted from the deletion, preStop included, as in
    /// Kubernetes; at least 2 s, or the whole period if shorter, are left after the hook) has passed, then exits. Stopping a pod that is already stopping
    /// waits for that stop; <see cref="KillPodAsync"/> and disposing the cluster cut the preStop wait short.
    /// </summary>
    /// <param name="pod">A pod of this cluster.</param>
    /// <param name="cancellationToken">Cancels the wait (the pod keeps stopping).</param>
    /// <returns>A task that completes when the pod has exited.</returns>
    public async Task StopPodAsync(SimulatedPod pod, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(pod);
        bool changed;
        SimulatedPod? replacement;
        lock (_gate)
        {
            EnsureOwn(pod);
            changed = BeginStop(pod);
            replacement = changed ? CreateReplacement() : null;
        }

        StartReplacement(replacement);
        await CompleteStopAsync(pod, changed, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Marks a starting or running pod Terminating (under the lock); false if it was already leaving.</summary>
    private bool BeginStop(SimulatedPod pod)
    {
        if (pod.State is not (SimulatedPodState.Pending or SimulatedPodState.Running))
        {
            return false;
        }

        // The readiness probe keeps passing while the pod still listens (KEP-1672: ready=false, serving=true,
        // terminating=true), unless the pod had already been made not ready.
        pod.ServingWhileTerminating = pod.State == SimulatedPodState.Running && pod.IsReady;
        pod.State = SimulatedPodState.Terminating;
        pod.IsReady = false;
        SignalPodsChanged();
        AddPodEvent(ClusterEventKind.PodStopping, pod, _options.PreStopDelay > TimeSpan.Zero
            ? $"{pod.Name} stopping (preStop {_options.PreStopDelay.TotalSeconds.ToString("0.###", CultureInfo.InvariantCulture)} s)"
            : $"{pod.Name} stopping");
        return true;
    }

    /// <summary>The rest of a stop begun by <see cref="BeginStop"/>: publish the endpoint change, then preStop, SIGTERM, exit.</summary>
    private async Task CompleteStopAsync(SimulatedPod pod, bool changed, CancellationToken cancellationToken)
    {
        if (changed)
        {
            await EndpointsChangedAsync().ConfigureAwait(false);
        }

        if (pod.App is null)
        {
            // Still starting: its start sees the stop and ends it; like any stop, this one returns once the pod has left.
            await pod.StartCompleted.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            return;
        }

        // The preStop wait is part of the pod's single stop (so concurrent stops wait for the same one, and a cancelled
        // wait leaves the pod stopping); it starts here, once the endpoint change is published.
        await StopAppAsync(pod, _options.PreStopDelay).WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Kills a pod, like SIGKILL or a crashed process: it leaves the cluster at once, every connection to it is reset
    /// (clients see RST), and its server stops without waiting for calls. A black-holed pod (see <see cref="BlackHole"/>)
    /// is on an unreachable node: its server stops, but no reset reaches the clients, whose connections stay silent until
    /// they give up on them (keepalive, deadlines) or the cluster is disposed.
    /// </summary>
    /// <param name="pod">A pod of this cluster.</param>
    /// <returns>A task that completes when the pod's server has stopped.</returns>
    public async Task KillPodAsync(SimulatedPod pod)
    {
        ArgumentNullException.ThrowIfNull(pod);
        List<ProxiedConnection> connections;
        SimulatedPod? replacement;
        lock (_gate)
        {
            EnsureOwn(pod);
            if (pod.State is SimulatedPodState.Terminated or SimulatedPodState.Killed)
            {
                return;
            }

            // A pod already terminating was removed by its stop, which replaced it if it was to be replaced.
            replacement = pod.State is SimulatedPodState.Pending or SimulatedPodState.Running ? CreateReplacement() : null;

            pod.State = SimulatedPodState.Killed;
            pod.IsReady = false;
            pod.RemovedAt = Elapsed();
            _pods.Remove(pod);
            SignalPodsChanged();
            // A black-holed pod's node is unreachable: no RST can reach its clients, their connections stay silent.
            connections = pod.IsBlackHoled ? [] : [.. pod.Connections];
            CloseNetworkAddress(pod);
            AddPodEvent(ClusterEventKind.PodKilled, pod, $"{pod.Name} killed");
        }

        StartReplacement(replacement);

        await EndpointsChangedAsync().ConfigureAwait(false);
        foreach (var connection in connections)
        {
            connection.Reset();
        }

        pod.KillSwitch.Cancel();
        if (pod.App is not null)
        {
            await StopAppAsync(pod).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// With <see cref="SimulatedClusterOptions.ReplaceRemovedPods"/>, the ReplicaSet's answer to a pod that StopPodAsync or
    /// KillPodAsync removes (under the lock that removes it, so every count taken later includes it): a new Pending pod.
    /// Not during a rolling update, which replaces lost pods itself, nor once the cluster is disposed.
    /// </summary>
    private SimulatedPod? CreateReplacement() =>
        _options.ReplaceRemovedPods && _rolloutReplicas is null && !_disposed ? CreatePod() : null;

    private void StartReplacement(SimulatedPod? replacement)
    {
        if (replacement is not null)
        {
            _ = StartReplacementAsync(replacement);
        }
    }

    private async Task StartReplacementAsync(SimulatedPod pod)
    {
        await Task.Yield(); // Building and starting the pod is not the work of the thread that stopped or killed one.
        try
        {
            await StartCreatedPodAsync(pod, raised: null, CancellationToken.None).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // Nobody awaits a replacement (disposal waits for its start): a failed start only leaves it out.
        catch (Exception)
#pragma warning restore CA1031
        {
        }
    }

    /// <summary>
    /// Black-holes a pod, like a node that lost power or a network partition: bytes stop flowing in both directions on
    /// every connection to it, and nothing is closed. The pod stays ready (endpoints are not updated until someone notices),
    /// so the ClusterIP still picks it for new connections; use <see cref="SetReadyAsync"/>, <see cref="KillPodAsync"/> or
    /// <see cref="StopPodAsync"/> to take it out. Irreversible. In a real cluster a connection DNATed to a pod on a dead
    /// node never completes its handshake; here the client's connect completes at the ClusterIP (a user-space proxy), which
    /// then holds the connection open and silent: it never connects to the pod (which sees no connection), forwards no byte,
    /// and sends no FIN or reset, until the client closes it (then it is released) or the cluster is disposed. In
    /// <see cref="KubeProxyMode.Iptables"/> mode the kernel picks the pod and a rule in the namespace drops the SYNs to it,
    /// so the ClusterIP's connect into the namespace hangs, and the client's connection is held the same way. Its own
    /// address in the simulated network (the one <see cref="SimulatedKubernetesApi.MirrorEndpoints"/> publishes) answers no SYN from then on, even after the pod was
    /// killed or stopped: a new connect to it hangs until the client's connect timeout, as to a node that is gone (on Linux;
    /// elsewhere the connect completes, and then nothing moves).
    /// </summary>
    /// <param name="pod">A pod of this cluster.</param>
    public void BlackHole(SimulatedPod pod)
    {
        ArgumentNullException.ThrowIfNull(pod);
        lock (_gate)
        {
            EnsureOwn(pod);
            if (pod.IsBlackHoled)
            {
                return;
            }

            pod.IsBlackHoled = true;
            foreach (var connection in pod.Connections)
            {
                connection.BlackHole();
            }

            if (pod.NetworkListener is not null)
            {
                DropNewConnections(pod);
            }

            AddEvent(ClusterEventKind.PodBlackHoled, pod, $"{pod.Name} black-holed");
        }

        if (_iptables is not null)
        {
            // Not awaited (BlackHole is synchronous); new connections wait for it instead (ConnectIptablesAsync).
            var written = WriteUnreachableRulesAsync();
            lock (_gate)
            {
                _unreachableRulesWritten = Task.WhenAll(_unreachableRulesWritten, written);
            }
        }
    }

    private async Task WriteUnreachableRulesAsync()
    {
        try
        {
            await ApplyIptablesRulesAsync().ConfigureAwait(false);
        }
#pragma warning disable CA1031 // Nobody awaits the write: a failed one leaves the pod accepting new connections, as before.
        catch (Exception)
#pragma warning restore CA1031
        {
        }
    }

    /// <summary>Turns a running pod's readiness on or off; a pod that is not ready receives no new connections.</summary>
    /// <param name="pod">A running pod of this cluster.</param>
    /// <param name="ready">The new readiness.</param>
    /// <returns>A task that completes when the ClusterIP follows the change.</returns>
    public async Task SetReadyAsync(SimulatedPod pod, bool ready)
    {
        ArgumentNullException.ThrowIfNull(pod);
        lock (_gate)
        {
            EnsureOwn(pod);
            if (pod.State != SimulatedPodState.Running || pod.IsReady == ready)
            {
                return;
            }

            pod.IsReady = ready;
            if (ready)
            {
                pod.ReadySince = Elapsed();
            }

            SignalPodsChanged();
            AddEvent(ClusterEventKind.PodReadinessChanged, pod, $"{pod.Name} {(ready ? "ready" : "not ready")}");
        }

        await EndpointsChangedAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Replaces every pod, one at a time, like a Deployment rolling update with maxSurge 1 and maxUnavailable 0:
    /// start a new pod, wait until it is ready, stop an old one gracefully, go on with the next.
    /// </summary>
    /// <remarks>
    /// Like a Deployment, the update works toward a replica count: the number of pods when it starts, changed by
    /// <see cref="ScaleAsync"/> (set) and <see cref="AddPodAsync"/> (one more) while it runs; it ends with exactly that many
    /// new pods. A pod stopped or killed during the update is replaced, as a ReplicaSet would; after the update only with <see cref="SimulatedClusterOptions.ReplaceRemovedPods"/>.
    /// A new pod counts as available only while it is ready: one made not ready (<see cref="SetReadyAsync"/>) holds the
    /// update, and the old pods keep serving, until it is ready again, stopped or killed. A black-holed pod stays ready
    /// (see <see cref="BlackHole"/>), so it counts as available, as Kubernetes would count it until someone notices.
    /// One update at a time.
    /// </remarks>
    /// <param name="cancellationToken">Cancels the update.</param>
    /// <returns>A task that completes when every old pod has exited.</returns>
    /// <exception cref="InvalidOperationException">Another rolling update of this cluster is running.</exception>
    public Task RollingUpdateAsync(CancellationToken cancellationToken = default) =>
        RollingUpdateAsync(TimeSpan.Zero, cancellationToken);

    /// <summary>
    /// Rolling update (see <see cref="RollingUpdateAsync(CancellationToken)"/>) in which each new pod must have been ready
    /// continuously for <paramref name="stepInterval"/> before an old pod stops and the next new pod starts, like
    /// <c>minReadySeconds</c>: the update spreads over time, and during each wait both the new and the old pod serve.
    /// </summary>
    /// <remarks>
    /// As in Kubernetes, where <c>minReadySeconds</c> counts from the last transition of the pod's Ready condition, the
    /// interval counts from the new pod's last turn to ready: a pod made not ready and ready again
    /// (<see cref="SetReadyAsync"/>) during the wait starts it over. This holds for every new pod, also those that
    /// <see cref="ScaleAsync"/> and <see cref="AddPodAsync"/> add during the update.
    /// </remarks>
    /// <param name="stepInterval">How long each new pod is ready continuously before an old pod stops, measured with <see cref="SimulatedClusterOptions.TimeProvider"/>; 0 or more.</param>
    /// <param name="cancellationToken">Cancels the update.</param>
    /// <returns>A task that completes when every old pod has exited.</returns>
    /// <exception cref="InvalidOperationException">Another rolling update of this cluster is running.</exception>
    public async Task RollingUpdateAsync(TimeSpan stepInterval, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(stepInterval, TimeSpan.Zero);
        int generation;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_rolloutReplicas is not null)
            {
                throw new InvalidOperationException("A rolling update of this cluster is already running; start the next one after it completes.");
            }

            var replicas = _pods.Count(p => p.State is SimulatedPodState.Pending or SimulatedPodState.Running);
            _rolloutReplicas = replicas;
            _rolloutReplicasSet++;
            generation = ++_generation;
            AddEvent(ClusterEventKind.RollingUpdateStarted, null, $"rolling update of {replicas} pods");
        }

        var stops = new List<Task>();
        try
        {
            // Each step decides under the lock from the pods as they are now, so scaling, adding, stopping and killing
            // pods during the update only change what the next step does.
            while (true)
            {
                SimulatedPod? victim = null;
                Task? starting = null;
                TimeSpan? availableIn = null;
                lock (_gate)
                {
                    ObjectDisposedException.ThrowIf(_disposed, this);
                    var replicas = _rolloutReplicas.GetValueOrDefault();
                    var old = _pods.Where(p => p.Generation < generation && p.State is SimulatedPodState.Pending or SimulatedPodState.Running).ToList();
                    var fresh = _pods.Where(p => p.Generation >= generation && p.State is SimulatedPodState.Pending or SimulatedPodState.Running).ToList();
                    // Available as in Kubernetes: running, and ready continuously for minReadySeconds (stepInterval), counted
                    // from its last turn to ready. A black-holed pod stays ready until someone notices (its node cannot report
                    // otherwise), so it counts as available too.
                    var now = Elapsed();
                    var freshAvailable = fresh.Count(p => p.State == SimulatedPodState.Running && p.IsReady && now - p.ReadySince >= stepInterval);
                    if (old.Count == 0 && fresh.Count >= replicas)
                    {
                        break;
                    }

                    if (old.Count > 0 && freshAvailable + old.Count > replicas)
                    {
                        // maxUnavailable 0: enough new pods are available to stop an old one (not-ready first, then the oldest).
                        victim = old.Where(p => p.State == SimulatedPodState.Running).OrderBy(p => p.IsReady).FirstOrDefault();
                        if (victim is null)
                        {
                            starting = Task.WhenAny(old.Select(p => p.StartCompleted.Task));
                        }
                        else
                        {
                            BeginStop(victim);
                        }
                    }
                    else if (fresh.Any(p => p.State == SimulatedPodState.Pending))
                    {
                        // New pods that ScaleAsync or AddPodAsync are starting: count them once they are ready.
                        starting = Task.WhenAny(fresh.Where(p => p.State == SimulatedPodState.Pending).Select(p => p.StartCompleted.Task));
                    }
                    else if (old.Count + fresh.Count > replicas)
                    {
                        // A new pod runs but is not available (not ready, or not ready for stepInterval yet): no old pod may
                        // stop (maxUnavailable 0), and it holds the surge, so no other pod may start (maxSurge 1). Wait until
                        // readiness or a pod's state changes (SetReadyAsync, a stop, a kill, the disposal), or until the first
                        // of the ready ones has been ready for stepInterval; a turn to not ready and back starts its count over.
                        starting = _podsChanged.Task;
                        availableIn = fresh
                            .Where(p => p.State == SimulatedPodState.Running && p.IsReady && now - p.ReadySince < stepInterval)
                            .Select(p => (TimeSpan?)(stepInterval - (now - p.ReadySince)))
                            .Min();
                    }
                }

                if (victim is not null)
                {
                    stops.Add(CompleteStopAsync(victim, changed: true, cancellationToken));
                    continue;
                }

                if (starting is not null)
                {
                    RolloutWaiting?.Invoke();
                    if (availableIn is { } wait)
                    {
                        try
                        {
                            await starting.WaitAsync(TimerDueTime(wait), _time, cancellationToken).ConfigureAwait(false);
                        }
                        catch (TimeoutException)
                        {
                            // A new pod has been ready for stepInterval (unless the wait was capped): the next step decides.
                        }
                    }
                    else
                    {
                        await starting.WaitAsync(cancellationToken).ConfigureAwait(false);
                    }

                    continue;
                }

                // maxSurge 1: at most one pod above the replica count, and only until an old pod stops.
                var created = new StrongBox<SimulatedPod?>();
                try
                {
                    await AddPodCoreAsync(byUser: false, cancellationToken, created).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested && created.Value?.App is not null)
                {
                    // Started, but stopped or killed while starting (a concurrent scale-down): the next step decides again.
                    // A start that failed (App never set), also with an OperationCanceledException of its own (a
                    // dependency's timeout), fails the update, as any other failed start: retrying it would loop forever.
                    continue;
                }

                // The new pod counts as available once it has been ready for stepInterval (minReadySeconds): the next
                // steps wait for that, while the old pod keeps serving (maxUnavailable 0).
            }
        }
        finally
        {
            lock (_gate)
            {
                _rolloutReplicas = null;
            }

            await Task.WhenAll(stops).ConfigureAwait(false);
        }

        lock (_gate)
        {
            AddEvent(ClusterEventKind.RollingUpdateCompleted, null, "rolling update completed");
        }
    }

    /// <summary>Test hook: runs when a rolling update's step waits for pods to change (outside the lock).</summary>
    internal Action? RolloutWaiting { get; set; }

    /// <summary>
    /// A timer's due time for a wait of <paramref name="wait"/>: rounded up to whole milliseconds (system timers count
    /// those, truncating, so a timer could fire a moment before a pod is available and the step would wait again for that
    /// moment), and at most a day (timers take less than 49.7 days; a longer wait is waited a day at a time).
    /// </summary>
    private static TimeSpan TimerDueTime(TimeSpan wait)
    {
        var ticks = Math.Min(wait.Ticks, TimeSpan.TicksPerDay);
        return TimeSpan.FromTicks((ticks + TimeSpan.TicksPerMillisecond - 1) / TimeSpan.TicksPerMillisecond * TimeSpan.TicksPerMillisecond);
    }

    /// <summary>Adds a user-defined mark to the timeline (e.g. "load started"), for charts and summaries.</summary>
    /// <param name="description">What happened.</param>
    public void Mark(string description)
    {
        ArgumentNullException.ThrowIfNull(description);
        lock (_gate)
        {
            AddEvent(ClusterEventKind.Mark, null, description);
        }
    }

    /// <summary>Time since the cluster started, measured with <see cref="SimulatedClusterOptions.TimeProvider"/>.</summary>
    /// <returns>The elapsed time.</returns>
    public TimeSpan Elapsed() => _time.GetElapsedTime(_startTimestamp);

    /// <summary>A snapshot of calls per pod, per-second counts, connections and the timeline so far.</summary>
    /// <returns>The summary.</returns>
    public ClusterSummary Summary()
    {
        List<SimulatedPod> pods;
        List<ClusterEvent> events;
        lock (_gate)
        {
            pods = [.. _allPods.Where(p => p.HasStarted)];
            events = [.. _events];
        }

        var total = pods.Sum(p => p.CallsServed);
        return new ClusterSummary(Elapsed(), [.. pods.Select(p => new PodSummary(p, total))], events);
    }

    // How long disposal waits for pod connections after Kestrel's stop gave up on them (it waits 1 s): generous for a
    // loaded machine, bounded for a handler that never ends.
    private static readonly TimeSpan ServerConnectionsCloseTimeout = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Stops every pod at once (no grace), resets every connection, closes the ClusterIP and, in
    /// <see cref="KubeProxyMode.Iptables"/> mode, removes the network namespace. Leaves no socket or task behind.
    /// </summary>
    /// <returns>
    /// A task that completes when everything is closed; every call (also concurrent ones) returns the same disposal. A pod
    /// connection whose call handler ignores the abort (an endpoint mapped by <see cref="SimulatedClusterOptions.ConfigureApp"/>
    /// that never ends) is waited for at most 10 s, then left to end with its handler.
    /// </returns>
    public ValueTask DisposeAsync()
    {
        TaskCompletionSource? owner = null;
        Task disposal;
        lock (_gate)
        {
            if (_disposal is null)
            {
                _disposed = true;
                SignalPodsChanged(); // A rolling update waiting for a pod wakes and throws ObjectDisposedException.
                owner = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _disposal = owner.Task;
            }

            disposal = _disposal;
        }

        if (owner is not null)
        {
            _ = DisposeCoreAsync(owner);
        }

        return new ValueTask(disposal);
    }

    private async Task DisposeCoreAsync(TaskCompletionSource completion)
    {
        try
        {
            await DisposeCoreAsync().ConfigureAwait(false);
            completion.SetResult();
        }
#pragma warning disable CA1031 // Passed on to every caller of DisposeAsync.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            completion.SetException(ex);
        }
    }

    private async Task DisposeCoreAsync()
    {
        await _shutdown.CancelAsync().ConfigureAwait(false);
        _listener.Dispose();
        await _acceptLoop.ConfigureAwait(false);
        List<Task> podLoops;
        lock (_gate)
        {
            foreach (var pod in _allPods)
            {
                pod.NetworkListener?.Dispose();
            }

            podLoops = [.. _podAcceptLoops];
        }

        await Task.WhenAll(podLoops).ConfigureAwait(false);

        // Pods still starting see the cancelled shutdown token (or, once started, _disposed) and stop themselves.
        List<Task> starts;
        lock (_gate)
        {
            starts = [.. _allPods.Select(p => p.StartCompleted.Task)];
        }

        await Task.WhenAll(starts).ConfigureAwait(false);

        List<ProxiedConnection> connections;
        List<SimulatedPod> pods;
        lock (_gate)
        {
            connections = [.. _connections];
            pods = [.. _allPods];
        }

        foreach (var connection in connections)
        {
            connection.Reset();
        }

        await Task.WhenAll(connections.Select(c => c.Completion)).ConfigureAwait(false);

        foreach (var pod in pods)
        {
            pod.KillSwitch.Cancel();
        }

        await Task.WhenAll(pods.Where(p => p.App is not null).Select(StopAppAsync)).ConfigureAwait(false);

        // Kestrel's stop aborts every connection but waits at most 1 s for them to end, so on a loaded machine a pod's
        // connection may still be running (its OpenConnections not yet decremented) when StopAsync returns: wait for the
        // pods' connection middleware to count every connection closed, so that nothing changes after disposal returns.
        List<Task> serverConnections;
        lock (_gate)
        {
            serverConnections = [.. pods.SelectMany(p => p.ServerConnections)];
        }

        // Bounded, as Kestrel's own wait is: a handler mapped by the user (ConfigureApp) that ignores the abort must not
        // make disposal hang; its connection is then left to end when the handler does.
        try
        {
            await Task.WhenAll(serverConnections).WaitAsync(ServerConnectionsCloseTimeout, TimeProvider.System).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }

        lock (_gate)
        {
            foreach (var pod in _pods)
            {
                pod.State = SimulatedPodState.Killed;
                pod.IsReady = false;
                pod.RemovedAt ??= Elapsed();
            }

            _pods.Clear();
        }

        foreach (var pending in _attribution.Values)
        {
            pending.TrySetCanceled();
        }

        if (_iptables is not null)
        {
            await _iptables.DisposeAsync().ConfigureAwait(false);
        }

        _shutdown.Dispose();
    }

    /// <summary>Wakes whatever waits for a pod's state or readiness to change; under the lock.</summary>
    private void SignalPodsChanged()
    {
        _podsChanged.TrySetResult();
        _podsChanged = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    internal void AddEvent(ClusterEventKind kind, SimulatedPod? pod, string description) =>
        _events.Add(new ClusterEvent(Elapsed(), kind, pod?.Name, description));

    /// <summary>
    /// A pod's stop, exit or kill, under the lock: only for a pod that started. One stopped or killed while starting never
    /// appeared (no PodStarted, not in Pods nor in the endpoints), so the timeline does not show it leaving either.
    /// </summary>
    private void AddPodEvent(ClusterEventKind kind, SimulatedPod pod, string description)
    {
        if (pod.HasStarted)
        {
            AddEvent(kind, pod, description);
        }
    }

    private void EnsureOwn(SimulatedPod pod)
    {
        if (!_allPods.Contains(pod))
        {
            throw new ArgumentException($"{pod.Name} does not belong to this cluster.", nameof(pod));
        }
    }

    private WebApplication BuildPod(SimulatedPod pod)
    {
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions { ApplicationName = typeof(SimulatedCluster).Assembly.GetName().Name });
        builder.WebHost.UseKestrelCore();
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Listen(IPAddress.Loopback, 0, listen =>
            {
                listen.Protocols = HttpProtocols.Http2;
                listen.Use(next => connection => OnPodConnectionAsync(pod, connection, next));
                _options.ConfigureListen?.Invoke(listen);
            });
        });

        if (_iptables is { } iptables)
        {
            builder.Services.Configure<SocketTransportOptions>(o => o.CreateBoundListenSocket = iptables.CreateBoundListenSocket);
        }

        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = _options.TerminationGracePeriod);
        builder.Services.AddLogging();
        builder.Services.AddGrpc();
        builder.Services.AddSingleton(pod);
        // Not registered as TimeProvider: Kestrel and other framework services would pick it up (a fake clock would stop
        // their timers); only the Greeter uses the cluster's clock.
        builder.Services.AddSingleton(new PodClock(_time));
        _options.ConfigureServices?.Invoke(builder.Services);

        var app = builder.Build();
        app.Use((context, next) => CountCallAsync(pod, context, next));
        if (_options.MapGreeter)
        {
            app.MapGrpcService<GreeterPodService>();
        }

        _options.ConfigureApp?.Invoke(app);
        return app;
    }

    private async Task OnPodConnectionAsync(SimulatedPod pod, ConnectionContext connection, ConnectionDelegate next)
    {
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate)
        {
            pod.ServerConnections.Add(closed.Task);
        }

        pod.OnConnectionOpened();
        try
        {
            if (_iptables is not null && connection.RemoteEndPoint is IPEndPoint remote)
            {
                if (BeforePodAttribution is { } hook)
                {
                    await hook().ConfigureAwait(false);
                }

                // Tell the ClusterIP side which pod the kernel picked for the connection from this source port. An entry that
                // is already complete was left by an earlier connection from this port whose ClusterIP side had given up
                // before its pod side came: replace it.
                var attribution = new PodAttribution(pod, Stopwatch.GetTimestamp());
                TaskCompletionSource<PodAttribution> entry;
                while (!(entry = _attribution.GetOrAdd(remote.Port, _ => NewAttributionEntry())).TrySetResult(attribution))
                {
                    _attribution.TryRemove(KeyValuePair.Create(remote.Port, entry));
                }
            }

            await next(connection).ConfigureAwait(false);
        }
        finally
        {
            pod.OnConnectionClosed();
            lock (_gate)
            {
                pod.ServerConnections.Remove(closed.Task);
            }

            closed.SetResult();
        }
    }

    private static async Task CountCallAsync(SimulatedPod pod, HttpContext context, RequestDelegate next)
    {
        pod.OnCallStarted();
        var succeeded = false;
        var admitted = false;
        try
        {
            if (pod.Capacity is { } capacity)
            {
                await capacity.WaitAsync(context.RequestAborted).ConfigureAwait(false);
                admitted = true;
            }

            await next(context).ConfigureAwait(false);
            succeeded = !context.RequestAborted.IsCancellationRequested && IsSuccess(context);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            // The client went away while the call queued or ran: a failed call, nothing to answer.
        }
        finally
        {
            if (admitted)
            {
                pod.Capacity!.Release();
            }

            pod.OnCallCompleted(succeeded);
        }
    }

    private static bool IsSuccess(HttpContext context)
    {
        var status = context.Features.Get<IHttpResponseTrailersFeature>()?.Trailers["grpc-status"] ?? default;
        if (status.Count == 0)
        {
            status = context.Response.Headers["grpc-status"];
        }

        return status.Count == 0 ? context.Response.StatusCode < 400 : status[0] == "0";
    }

    private Task StopAppAsync(SimulatedPod pod) => StopAppAsync(pod, TimeSpan.Zero);

    /// <summary>Starts the pod's single stop, or returns the one already started (whatever its preStop delay).</summary>
    private Task StopAppAsync(SimulatedPod pod, TimeSpan preStopDelay)
    {
        lock (_gate)
        {
            return pod.StopTask ??= RunStopAsync(pod, preStopDelay);
        }
    }

    private async Task RunStopAsync(SimulatedPod pod, TimeSpan preStopDelay)
    {
        if (preStopDelay > TimeSpan.Zero)
        {
            // The preStop hook: the pod keeps listening and serving while clients follow the endpoint change. The timer is
            // created here, synchronously, so it runs from the moment the stop starts (also on a fake clock).
            try
            {
                await Task.Delay(preStopDelay, _time, pod.KillSwitch.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                // Killed or disposed during the hook: stop now, without grace.
            }
        }

        await Task.Yield();
        bool servingChanged;
        lock (_gate)
        {
            // SIGTERM: the server stops listening, so from now on the readiness probe fails (serving=false).
            servingChanged = pod.ServingWhileTerminating;
            pod.ServingWhileTerminating = false;
        }

        if (servingChanged)
        {
            EndpointsChanged?.Invoke();
        }

        var app = pod.App!;
        using (var grace = CancellationTokenSource.CreateLinkedTokenSource(pod.KillSwitch.Token))
        {
            grace.CancelAfter(GraceAfterPreStop(_options.TerminationGracePeriod, preStopDelay));
            try
            {
                await app.StopAsync(grace.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
        }

        await app.DisposeAsync().ConfigureAwait(false);
        lock (_gate)
        {
            if (pod.State == SimulatedPodState.Terminating)
            {
                pod.State = SimulatedPodState.Terminated;
                pod.RemovedAt = Elapsed();
                _pods.Remove(pod);
                SignalPodsChanged();
                AddPodEvent(ClusterEventKind.PodStopped, pod, $"{pod.Name} exited");
            }

            CloseNetworkAddress(pod);
        }

        EndpointsChanged?.Invoke();
    }

    /// <summary>
    /// What is left of the grace period for SIGTERM once the preStop hook has run: as in Kubernetes, the grace period counts
    /// from the deletion, hook included, and the kubelet still gives the container at least 2 s after the hook (here at
    /// most the whole grace period, so short periods chosen for fast tests stay short).
    /// </summary>
    internal static TimeSpan GraceAfterPreStop(TimeSpan gracePeriod, TimeSpan preStopDelay) =>
        preStopDelay <= TimeSpan.Zero
            ? gracePeriod
            : TimeSpan.FromTicks(Math.Max((gracePeriod - preStopDelay).Ticks, Math.Min(MinimumGraceAfterPreStop.Ticks, gracePeriod.Ticks)));

    /// <summary>
    /// Raised (outside the lock, on the thread that made the change) after the set of pods or their readiness changed:
    /// a pod became ready, turned not ready, started stopping, exited or was killed. Handlers must be quick and must not throw.
    /// Used by <see cref="SimulatedKubernetesApi"/> to mirror the pods as EndpointSlices.
    /// </summary>
    internal event Action? EndpointsChanged;

    private async Task EndpointsChangedAsync()
    {
        EndpointsChanged?.Invoke();
        await ApplyIptablesRulesAsync().ConfigureAwait(false);
    }

    private async Task ApplyIptablesRulesAsync()
    {
        if (_iptables is null)
        {
            return;
        }

        // The snapshot is taken inside the proxy's rule lock, so the last rewrite always reflects the latest state.
        await _iptables.ApplyEndpointsAsync(
            () =>
            {
                lock (_gate)
                {
                    if (_disposed)
                    {
                        return null;
                    }

                    // A black-holed pod's SYNs are dropped even once it has left (a dead node answers nothing, not even a
                    // reset), until another pod listens on its port.
                    var live = _pods.Where(p => !p.IsBlackHoled && p.EndPoint is not null).Select(p => p.EndPoint!).ToHashSet();
                    return new IptablesProxy.EndpointRules(
                        [.. _pods.Where(p => p.IsReady).Select(p => p.EndPoint!)],
                        [.. _allPods.Where(p => p.IsBlackHoled && p.EndPoint is not null && !live.Contains(p.EndPoint)).Select(p => p.EndPoint!).Distinct()]);
                }
            },
            CancellationToken.None).ConfigureAwait(false);
    }

    /// <summary>
    /// Gives a started pod (userspace mode) its own address in the simulated network: a loopback listener whose
    /// connections are relayed to that pod only, and are black-holed, reset and closed like ClusterIP connections. It is
    /// the pod IP that <see cref="SimulatedKubernetesApi.MirrorEndpoints"/> publishes, so clients that resolve pods
    /// themselves see a black-holed pod hang. Closed when the pod exits or is killed (new connections are then refused).
    /// </summary>
    internal IPEndPoint EnsureNetworkEndPoint(SimulatedPod pod)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (pod.NetworkListener is null)
            {
                var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
                listener.Listen(256);
                pod.NetworkListener = listener;
                pod.NetworkEndPoint = (IPEndPoint)listener.LocalEndPoint!;
                _podAcceptLoops.Add(AcceptLoopAsync(listener, (connection, ct) => ConnectToPodAsync(connection, pod, ct)));
                if (pod.IsBlackHoled)
                {
                    DropNewConnections(pod);
                }
                else if (pod.State is SimulatedPodState.Terminated or SimulatedPodState.Killed)
                {
                    listener.Dispose();
                }
            }

            return pod.NetworkEndPoint!;
        }
    }

    /// <summary>
    /// Makes a black-holed pod's network address answer no SYN, neither with a SYN-ACK nor with a reset, so a new connect
    /// hangs until the client's own connect timeout, as to a node that is gone (under the lock). See
    /// <see cref="SilentListener"/>. Where it cannot (not Linux), new connects complete and then hang: the relay holds them
    /// silent and never connects to a black-holed pod (see ConnectToPodAsync).
    /// </summary>
    private static void DropNewConnections(SimulatedPod pod) => SilentListener.TryDropNewConnections(pod.NetworkListener!);

    /// <summary>
    /// A pod left: its network address refuses new connections from now on (under the lock), unless the pod is black-holed:
    /// an unreachable node refuses nothing, so its address keeps dropping SYNs until the cluster is disposed.
    /// </summary>
    private static void CloseNetworkAddress(SimulatedPod pod)
    {
        if (!pod.IsBlackHoled)
        {
            pod.NetworkListener?.Dispose();
        }
    }

    private async ValueTask<Socket?> ConnectToPodAsync(ProxiedConnection connection, SimulatedPod pod, CancellationToken cancellationToken)
    {
        bool unreachable;
        lock (_gate)
        {
            unreachable = pod.IsBlackHoled;
        }

        if (unreachable)
        {
            // A new connection to a pod on a node that is gone (the ClusterIP picked a black-holed pod, which stays ready; or
            // it reached the pod's own address where SYNs cannot be dropped): in a real cluster its handshake never completes.
            // Here the client's handshake completed at the proxy, so the closest is to send nothing (no byte, FIN or reset)
            // and never connect to the pod, until the client gives up (then the connection is released) or the cluster is
            // disposed (reset).
            await connection.HoldAsync(cancellationToken).ConfigureAwait(false);
            return null;
        }

        var backend = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await backend.ConnectAsync(pod.EndPoint!, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            backend.Dispose();
            throw;
        }

        return Attach(connection, pod, backend);
    }

    private async Task AcceptLoopAsync(Socket listener, Func<ProxiedConnection, CancellationToken, ValueTask<Socket?>> connectBackend)
    {
        await Task.Yield();
        while (true)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(_shutdown.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException || _shutdown.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException ex) when (ex.SocketErrorCode is SocketError.OperationAborted or SocketError.Interrupted)
            {
                return; // The listener was closed: a pod's network address when the pod left.
            }
            catch (SocketException)
            {
                // E.g. a connection reset while queued, or out of file descriptors: back off briefly, keep accepting.
                await Task.Delay(10).ConfigureAwait(false);
                continue;
            }

            client.NoDelay = true;
            var connection = new ProxiedConnection(client);
            lock (_gate)
            {
                if (_disposed)
                {
                    connection.Reset();
                    return;
                }

                _connections.Add(connection);
            }

            connection.Start(connectBackend, OnConnectionCompleted);
        }
    }

    private void OnConnectionCompleted(ProxiedConnection connection)
    {
        lock (_gate)
        {
            _connections.Remove(connection);
            connection.Pod?.Connections.Remove(connection);
        }
    }

    private ValueTask<Socket?> ConnectBackendAsync(ProxiedConnection connection, CancellationToken cancellationToken) =>
        _iptables is null ? ConnectUserspaceAsync(connection, cancellationToken) : ConnectIptablesAsync(connection, cancellationToken);

    private ValueTask<Socket?> ConnectUserspaceAsync(ProxiedConnection connection, CancellationToken cancellationToken)
    {
        SimulatedPod? pod;
        lock (_gate)
        {
            var ready = _pods.Where(p => p.IsReady).ToList();
            pod = ready.Count == 0 ? null : ready[_random.Next(ready.Count)];
        }

        // No endpoints: kube-proxy rejects the connection.
        return pod is null ? ValueTask.FromResult<Socket?>(null) : ConnectToPodAsync(connection, pod, cancellationToken);
    }

    private async ValueTask<Socket?> ConnectIptablesAsync(ProxiedConnection connection, CancellationToken cancellationToken)
    {
        // Real time, as the sockets (also with a fake TimeProvider).
        var connectStarted = Stopwatch.GetTimestamp();
        Task unreachableRules;
        lock (_gate)
        {
            unreachableRules = _unreachableRulesWritten;
        }

        await unreachableRules.WaitAsync(cancellationToken).ConfigureAwait(false);
        // A connect the kernel DNATs to a black-holed pod hangs (its SYNs are dropped) until the client gives up.
        Socket backend;
        try
        {
            backend = await connection.ConnectWhileWatchingClientAsync(_iptables!.ConnectToServiceAsync, cancellationToken).ConfigureAwait(false);
        }
        catch (SocketException ex) when (ex.SocketErrorCode == SocketError.TimedOut)
        {
            // The kernel gave up its SYN retries (net.ipv4.tcp_syn_retries). The client's own connect has completed here,
            // and a dead node sends no reset: hold it silent, as the userspace mode does, until it gives up too.
            await connection.HoldAsync(cancellationToken).ConfigureAwait(false);
            return null;
        }

        var port = ((IPEndPoint)backend.LocalEndPoint!).Port;
        TaskCompletionSource<PodAttribution> pending;
        // An answer from before this connection was opened is not about it: an earlier connection from the same source port
        // left it, its pod side having come after its ClusterIP side gave up (timeout). It would name the wrong pod.
        while ((pending = _attribution.GetOrAdd(port, _ => NewAttributionEntry())).Task is { IsCompletedSuccessfully: true } answered
            && answered.Result.AcceptedAt < connectStarted)
        {
            _attribution.TryRemove(KeyValuePair.Create(port, pending));
        }

        using var stopWatching = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        try
        {
            // A pod can close a new connection before its middleware sees it (Kestrel's connection limit, a listener closing
            // with the connection in its backlog), and then no answer comes: pass that close on at once, as kube-proxy would,
            // instead of holding the client until the timeout. The connection is then pinned to no pod.
            var closedByPod = ClosedBeforeDataAsync(backend, stopWatching.Token);
            var first = await Task.WhenAny(pending.Task, closedByPod).WaitAsync(AttributionTimeout, cancellationToken).ConfigureAwait(false);
            if (first == closedByPod && await closedByPod.ConfigureAwait(false))
            {
                return backend;
            }

            // The peek must be over before the pumps read the socket.
            await stopWatching.CancelAsync().ConfigureAwait(false);
            await closedByPod.ConfigureAwait(false);
            var pod = (await pending.Task.WaitAsync(AttributionTimeout, cancellationToken).ConfigureAwait(false)).Pod;
            return Attach(connection, pod, backend);
        }
        catch
        {
            backend.Dispose();
            throw;
        }
        finally
        {
            _attribution.TryRemove(KeyValuePair.Create(port, pending));
        }
    }

    /// <summary>
    /// True once the pod has closed or reset <paramref name="backend"/> with nothing to read before; false when data came
    /// first or the watch was stopped. Peeks, so that it consumes nothing.
    /// </summary>
    private static async Task<bool> ClosedBeforeDataAsync(Socket backend, CancellationToken cancellationToken)
    {
        try
        {
            return await backend.ReceiveAsync(new byte[1], SocketFlags.Peek, cancellationToken).ConfigureAwait(false) == 0;
        }
        catch (SocketException)
        {
            return true;
        }
        catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
        {
            return false;
        }
    }

    private Socket? Attach(ProxiedConnection connection, SimulatedPod pod, Socket backend)
    {
        lock (_gate)
        {
            // A pod that left refuses the connection (reset), unless its node is black-holed: then nothing comes back,
            // not even a reset, and the connection hangs like every other one to that node.
            if (_disposed || (pod.State is SimulatedPodState.Killed or SimulatedPodState.Terminated && !pod.IsBlackHoled))
            {
                backend.Dispose();
                return null;
            }

            connection.Pod = pod;
            pod.Connections.Add(connection);
            if (pod.IsBlackHoled)
            {
                connection.BlackHole();
            }

            return backend;
        }
    }

    private static TaskCompletionSource<PodAttribution> NewAttributionEntry() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Iptables mode: the pod that accepted a connection from the ClusterIP, and when (<see cref="Stopwatch"/> timestamp).</summary>
    private readonly record struct PodAttribution(SimulatedPod Pod, long AcceptedAt);
}
