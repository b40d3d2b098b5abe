using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using ConnectionRefresh.Kubernetes;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing.Tests.TestSupport;
using Grpc.Core;
using Grpc.Net.Client;
using Grpc.Net.Client.Configuration;
using k8s;
using k8s.Models;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Time.Testing;

namespace ConnectionRefresh.Testing.Tests;

/// <summary>
/// <see cref="SimulatedKubernetesApi.MirrorEndpoints"/> with the real <c>kubernetes:///</c> resolver and round_robin in front
/// of a <see cref="SimulatedCluster"/>: the resolver follows scale-out, readiness and graceful stops.
/// </summary>
public sealed class SimulatedKubernetesApiTests
{
    /// <summary>The issue's promise: a pod added to the endpoints receives calls within 2 s (loopback: normally ~0.1 s).</summary>
    private static readonly TimeSpan NewPodFirstCallLimit = TimeSpan.FromSeconds(2);

    [Fact]
    public async Task MirrorEndpoints_ResolverClient_FollowsScaleOutReadinessAndStopsWithoutFailedCalls()
    {
        // The cluster's clock is fake so that a stopping pod stays in its preStop hook (published terminating, still
        // serving) until the test has seen the client follow, however loaded the machine is. Latencies are measured in
        // real time with stopwatches.
        var time = new FakeTimeProvider();
        var preStop = TimeSpan.FromSeconds(5);
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions
        {
            Replicas = 2,
            TimeProvider = time,
            PreStopDelay = preStop,
            TerminationGracePeriod = TimeSpan.FromSeconds(10),
        });
        await using var api = await SimulatedKubernetesApi.StartAsync("token-1");
        using var mirror = api.MirrorEndpoints(cluster);
        using var account = new TempServiceAccount("token-1");
        await using var services = ResolverClient(api, account.Path);
        await using var load = new CallLoop(services.GetRequiredService<Greeter.GreeterClient>());

        // Both pods are found through the API and called.
        await Poll.UntilAsync(() => cluster.Pods.All(p => p.CallsServed > 0), "both initial pods receive calls");

        // Scale-out: ScaleAsync returns when the new pods are ready, i.e. in the endpoints.
        var before = cluster.Pods.Select(p => p.Name).ToHashSet();
        await cluster.ScaleAsync(4);
        var added = cluster.Pods.Where(p => !before.Contains(p.Name)).ToList();
        Assert.Equal(2, added.Count);
        var firstCalls = await Poll.UntilAsync(() => added.All(p => p.FirstCallAt is not null), "the new pods receive calls");
        Assert.True(firstCalls <= NewPodFirstCallLimit, $"the new pods got their first calls {firstCalls.TotalSeconds:0.00} s after they became ready");

        // Readiness off: the pod keeps running and would answer, so any call it still serves was routed to it by the client.
        var unready = cluster.Pods.First(p => before.Contains(p.Name));
        cluster.Mark($"{DateTime.UtcNow:HH:mm:ss.fff} readiness off");
        var readinessOff = Stopwatch.StartNew();
        await cluster.SetReadyAsync(unready, false);
        await load.WaitForQuietAsync(unready, calls: 400);
        // Generous bound for the resolver to drop the pod under machine load (watch event + subchannel shutdown; normally ms).
        Assert.True(readinessOff.Elapsed < TimeSpan.FromSeconds(10), $"dropping the not-ready pod took {readinessOff.Elapsed.TotalSeconds:0.0} s");
        var servedWhenDropped = unready.CallsServed;
        await load.WaitForCallsAsync(1000);
        Assert.Equal(servedWhenDropped, unready.CallsServed);

        // Graceful stop of another pod with a preStop hook, as a Deployment does it: the pod is published terminating (not
        // ready, still serving) and keeps listening during the hook, so the client must stop picking it before it stops
        // listening. (Without a preStop delay the pod stops listening at once, racing the endpoint update: a client that
        // resolves pods itself may still pick it for a few milliseconds and fail those calls, as in a real cluster.)
        // Nothing fails, and it receives nothing afterwards.
        var stopped = added[0];
        var stopping = cluster.StopPodAsync(stopped);
        await load.WaitForQuietAsync(stopped, calls: 400);
        Assert.Equal(SimulatedPodState.Terminating, stopped.State); // Still in its preStop hook, serving: the client left it on the event.
        time.Advance(preStop);
        await Poll.WithTimeout(stopping, "the pod to exit after its preStop hook");
        var servedWhenStopped = stopped.CallsServed;
        await load.WaitForCallsAsync(1000);
        Assert.Equal(servedWhenStopped, stopped.CallsServed);
        Assert.DoesNotContain(cluster.Pods, p => p.Name == stopped.Name);

        // The remaining ready pods share the calls, and no call failed at any point.
        Assert.All(cluster.ReadyPods, p => Assert.True(load.Replies.GetValueOrDefault(p.Name) > 0, $"{p.Name} got no calls"));
        Assert.True(load.Failures.IsEmpty, string.Join("\n", load.Failures.Select(f => f.Message)) + "\n" + string.Join("\n", cluster.Summary().Events.Select(e => $"{e.At.TotalSeconds:0.000} {e.Description}")));
    }

    [Fact]
    public async Task MirrorEndpoints_PublishesOneSlicePerPodWithTheNamedPortAndFollowsPodExit()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 2, TerminationGracePeriod = TimeSpan.Zero });
        await using var api = await SimulatedKubernetesApi.StartAsync();
        using var mirror = api.MirrorEndpoints(cluster, service: "svc", ns: "ns1", portName: "h2");
        using var http = new HttpClient { BaseAddress = api.Url };

        var slices = await ListAsync(http, "ns1", "svc");
        Assert.Equal(cluster.Pods.Select(p => "svc-" + p.Name).Order(), slices.Select(s => s.Metadata.Name).Order());
        foreach (var pod in cluster.Pods)
        {
            var slice = slices.Single(s => s.Metadata.Name == "svc-" + pod.Name);
            Assert.Equal("h2", slice.Ports.Single().Name);
            Assert.Equal("127.0.0.1", slice.Endpoints.Single().Addresses.Single());
            Assert.True(slice.Endpoints.Single().Conditions.Ready);

            // The published address is the pod's address in the simulated network: it reaches that pod (through a relay
            // that black-holes and kills affect), not the pod's Kestrel port directly.
            var port = slice.Ports.Single().Port;
            Assert.NotEqual(pod.Address.Port, port);
            using var client = new TestClient(new Uri($"http://127.0.0.1:{port}"));
            Assert.Equal(pod.Name, await client.HelloAsync());
        }

        Assert.Empty(await ListAsync(http, "default", "svc"));

        var victim = cluster.Pods[0];
        await cluster.SetReadyAsync(victim, false);
        Assert.False((await ListAsync(http, "ns1", "svc")).Single(s => s.Metadata.Name == "svc-" + victim.Name).Endpoints.Single().Conditions.Ready);

        // A black-holed pod hangs for clients that connect to its published address (a dead node), even though it
        // stays in the slice until someone turns it not ready.
        cluster.BlackHole(victim);
        var victimPort = (await ListAsync(http, "ns1", "svc")).Single(s => s.Metadata.Name == "svc-" + victim.Name).Ports.Single().Port;
        using (var hanging = new TestClient(new Uri($"http://127.0.0.1:{victimPort}")))
        {
            var error = await Assert.ThrowsAsync<RpcException>(() => hanging.HelloAsync(deadline: TimeSpan.FromMilliseconds(500)));
            Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);
        }

        await cluster.KillPodAsync(victim);
        Assert.DoesNotContain(await ListAsync(http, "ns1", "svc"), s => s.Metadata.Name == "svc-" + victim.Name);
    }

    [Fact]
    public async Task ScaleAsync_DownStopsAPodStillStarting_ThePodNeverAppearsInPodsEndpointsTimelineOrSummary()
    {
        // The scale-down stops the scale-up's pod while it starts (its server listens, a slow warm-up holds it): the pod
        // never was an endpoint, so no reader may see it, in particular not as Terminating without an Address.
        var started = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions
        {
            Replicas = 0,
            ConfigureServices = services => services.AddHostedService(sp => new SimulatedClusterTests.SlowStart(sp, started, release.Task)),
        });
        await using var api = await SimulatedKubernetesApi.StartAsync();
        using var mirror = api.MirrorEndpoints(cluster, service: "svc");
        using var http = new HttpClient { BaseAddress = api.Url };
        Task? down = null;
        cluster.AfterScaleDecided = () =>
        {
            cluster.AfterScaleDecided = null;
            down = cluster.ScaleAsync(0);
        };
        var up = cluster.ScaleAsync(1);
        await Poll.WithTimeout(started.Task, "the new pod to listen and start warming up");

        // The stop was decided (and the endpoint change published) before the pod's server listened.
        Assert.Empty(cluster.Pods);
        Assert.Empty(await ListAsync(http, "default", "svc"));

        release.SetResult();
        await Poll.WithTimeout(down!, "the scale-down");
        await Poll.WithTimeout(up, "the scale-up");
        Assert.Empty(cluster.Pods);
        Assert.Empty(await ListAsync(http, "default", "svc"));
        var summary = cluster.Summary();
        Assert.Empty(summary.Pods);
        Assert.DoesNotContain(summary.Events, e => e.Pod is not null);
    }

    [Fact]
    public async Task KillPodAsync_BlackHoledPod_NewConnectionsToItsAddressHangUntilTheClientsConnectTimeout()
    {
        // An unreachable node answers no SYN (no SYN-ACK, no RST), before and after its pod is killed: a client that still
        // has its address (its resolver has not seen the removal yet) waits for its own connect timeout, it is not refused.
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions { Replicas = 1 });
        await using var api = await SimulatedKubernetesApi.StartAsync();
        using var mirror = api.MirrorEndpoints(cluster, service: "svc");
        using var http = new HttpClient { BaseAddress = api.Url };
        var pod = cluster.Pods.Single();
        var port = (await ListAsync(http, "default", "svc")).Single().Ports.Single().Port!.Value;
        var address = new IPEndPoint(IPAddress.Loopback, port);

        cluster.BlackHole(pod);
        await AssertConnectHangsAsync(address);

        await cluster.KillPodAsync(pod);
        await AssertConnectHangsAsync(address);
        // 1 s connect timeout: a refused connect fails within milliseconds, so a failure after the timeout means the connect
        // got no answer at all; the 30 s deadline is there only so that a hanging bug cannot hang the test.
        using var channel = GrpcChannel.ForAddress($"http://127.0.0.1:{port}", new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler { ConnectTimeout = TimeSpan.FromSeconds(1) },
        });
        var stopwatch = Stopwatch.StartNew();
        var error = await Assert.ThrowsAsync<RpcException>(() => new Greeter.GreeterClient(channel)
            .SayHelloAsync(new HelloRequest { Name = "x" }, deadline: DateTime.UtcNow.AddSeconds(30)).ResponseAsync);
        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.True(stopwatch.Elapsed >= TimeSpan.FromSeconds(0.9), $"failed after {stopwatch.Elapsed}, before the connect timeout: {error}");
    }

    /// <summary>A raw connect gets no answer for a second: neither accepted (SYN-ACK) nor refused (RST).</summary>
    private static async Task AssertConnectHangsAsync(IPEndPoint address)
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        // 1 s: on loopback an answered connect (accepted or refused) takes well under a millisecond, even on a loaded machine.
        using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(1));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await socket.ConnectAsync(address, wait.Token));
    }

    [Fact]
    public async Task MirrorEndpoints_PodInPreStopDelay_PublishedTerminatingNotReadyWhileItsAddressStillServes()
    {
        // A fake clock: the preStop wait cannot end before Advance, however loaded the machine is.
        var time = new FakeTimeProvider();
        var delay = TimeSpan.FromSeconds(2);
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions
        {
            Replicas = 2,
            TimeProvider = time,
            PreStopDelay = delay,
            TerminationGracePeriod = TimeSpan.FromSeconds(10),
        });
        await using var api = await SimulatedKubernetesApi.StartAsync();
        using var mirror = api.MirrorEndpoints(cluster, service: "svc");
        using var http = new HttpClient { BaseAddress = api.Url };
        var victim = cluster.Pods[0];
        var published = new Uri($"http://127.0.0.1:{(await ListAsync(http, "default", "svc")).Single(s => s.Metadata.Name == "svc-" + victim.Name).Ports.Single().Port}");
        using var pinned = new TestClient(published);
        Assert.Equal(victim.Name, await pinned.HelloAsync());

        var stop = cluster.StopPodAsync(victim);

        // Out of the endpoints at once (a resolver stops picking it), published as the EndpointSlice controller does for a
        // terminating pod that still passes its readiness probe (KEP-1672): not ready, but serving and terminating...
        var conditions = (await ListAsync(http, "default", "svc")).Single(s => s.Metadata.Name == "svc-" + victim.Name).Endpoints.Single().Conditions;
        Assert.False(conditions.Ready);
        Assert.True(conditions.Serving);
        Assert.True(conditions.Terminating);

        // ...while its published address still serves: the open connection, and a new one from a client that has not
        // seen the change yet.
        Assert.Equal(victim.Name, await pinned.HelloAsync());
        using (var late = new TestClient(published))
        {
            Assert.Equal(victim.Name, await late.HelloAsync());
        }

        Assert.False(stop.IsCompleted);

        time.Advance(delay);
        await Poll.WithTimeout(stop, "the stop to end after the preStop delay");

        Assert.DoesNotContain(await ListAsync(http, "default", "svc"), s => s.Metadata.Name == "svc-" + victim.Name);
        var events = cluster.Summary().Events;
        Assert.Equal(delay, events.Single(e => e.Kind == ClusterEventKind.PodStopped).At - events.Single(e => e.Kind == ClusterEventKind.PodStopping).At);
    }

    [Fact]
    public async Task MirrorEndpoints_PodStopping_ServingUntilItsServerStopsListeningThenNotServingWhileCallsFinish()
    {
        // A fake clock holds the pod in its preStop hook and a call on it running (delay_ms), whatever the machine's load.
        var time = new FakeTimeProvider();
        var delay = TimeSpan.FromSeconds(2);
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions
        {
            Replicas = 1,
            TimeProvider = time,
            PreStopDelay = delay,
            TerminationGracePeriod = TimeSpan.FromSeconds(30),
        });
        await using var api = await SimulatedKubernetesApi.StartAsync();
        using var mirror = api.MirrorEndpoints(cluster, service: "svc");
        using var http = new HttpClient { BaseAddress = api.Url };
        var victim = cluster.Pods.Single();
        using var client = new TestClient(cluster.Address);
        var running = client.HelloAsync(delayMs: 10_000);
        await Poll.UntilAsync(() => victim.CallsActive == 1, "the slow call is running");

        var stop = cluster.StopPodAsync(victim);
        Assert.Equal((false, true, true), await ConditionsAsync(http, victim));

        // SIGTERM after the preStop hook: the server stops listening, so its readiness probe fails from then on, while
        // the running call keeps the pod terminating.
        time.Advance(delay);
        await Poll.UntilAsync(async () => await ConditionsAsync(http, victim) == (false, false, true), "serving turns false once the server stops listening");
        Assert.Equal(SimulatedPodState.Terminating, victim.State);

        // Advanced until the call ends: CallsActive counts the call before its handler has started its delay on the fake
        // clock, and a single Advance that came first (a slow handler on a loaded machine) left it waiting for the grace
        // period (30 s, real time), which then reset it.
        await Poll.UntilAsync(() =>
        {
            time.Advance(TimeSpan.FromSeconds(10));
            return running.IsCompleted;
        }, "the running call to finish");
        Assert.Equal(victim.Name, await running);
        await Poll.WithTimeout(stop, "the pod to exit");
        Assert.DoesNotContain(await ListAsync(http, "default", "svc"), s => s.Metadata.Name == "svc-" + victim.Name);
    }

    [Fact]
    public async Task MirrorEndpoints_NotReadyPodStopping_PublishedNeitherReadyNorServing()
    {
        var time = new FakeTimeProvider();
        await using var cluster = await SimulatedCluster.StartAsync(new SimulatedClusterOptions
        {
            Replicas = 2,
            TimeProvider = time,
            PreStopDelay = TimeSpan.FromSeconds(2),
            TerminationGracePeriod = TimeSpan.FromSeconds(10),
        });
        await using var api = await SimulatedKubernetesApi.StartAsync();
        using var mirror = api.MirrorEndpoints(cluster, service: "svc");
        using var http = new HttpClient { BaseAddress = api.Url };
        var victim = cluster.Pods[0];

        // A running pod made not ready fails its readiness probe: neither ready nor serving, not terminating.
        await cluster.SetReadyAsync(victim, false);
        Assert.Equal((false, false, false), await ConditionsAsync(http, victim));

        // It stays not serving while it terminates (its probe still fails).
        var stop = cluster.StopPodAsync(victim);
        Assert.Equal((false, false, true), await ConditionsAsync(http, victim));

        time.Advance(TimeSpan.FromSeconds(2));
        await Poll.WithTimeout(stop, "the pod to exit");
    }

    [Fact]
    public async Task DisposeAsync_ClientsWatchAgainAsSoonAsTheirWatchEnds_StopsWithoutWaitingForTheShutdownTimeout()
    {
        // Every watch client (the resolver too) starts a new watch as soon as one ends. DisposeAsync ends the open watches and
        // then stops Kestrel; a watch that arrived in between used to stay open until Kestrel's 30 s shutdown timeout.
        var api = await SimulatedKubernetesApi.StartAsync();
        using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 16 }) { BaseAddress = api.Url };
        using var stop = new CancellationTokenSource();
        var watchers = Enumerable.Range(0, 16).Select(_ => Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    using var response = await http.GetAsync("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?watch=true&resourceVersion=1000",
                        HttpCompletionOption.ResponseHeadersRead, stop.Token);
                    await using var body = await response.Content.ReadAsStreamAsync(stop.Token);
                    await body.CopyToAsync(Stream.Null, stop.Token);
                }
                catch (Exception ex) when (ex is HttpRequestException or IOException or OperationCanceledException)
                {
                    // Refused or reset once the server stops; the loop ends when the test stops it.
                }
            }
        })).ToList();
        try
        {
            await Poll.UntilAsync(() => api.ActiveWatches == 16, "16 watches are open");

            await Poll.WithTimeout(api.DisposeAsync().AsTask(), "the API server to stop", TimeSpan.FromSeconds(15));
        }
        finally
        {
            await stop.CancelAsync();
            await Task.WhenAll(watchers);
        }
    }

    [Theory]
    [InlineData("")]
    [InlineData("&resourceVersion=0")]
    public async Task Watch_WithoutResourceVersion_StartsWithTheCurrentSlicesAsAdded(string resourceVersion)
    {
        // As the API server does ("get state and start at most recent"): a watch without a resourceVersion, or from "0",
        // first sends every current object as ADDED; not the history (a slice added and deleted again is not there), and
        // also after a compaction.
        await using var api = await SimulatedKubernetesApi.StartAsync();
        api.Apply("default", Slice("svc-a"));
        api.Apply("default", Slice("svc-b"));
        api.Delete("default", "svc-b");
        api.Compact();
        api.Apply("default", Slice("svc-c"));
        using var http = new HttpClient { BaseAddress = api.Url };

        using var response = await http.GetAsync(
            $"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?watch=true&allowWatchBookmarks=true&labelSelector=kubernetes.io/service-name=svc{resourceVersion}",
            HttpCompletionOption.ResponseHeadersRead);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        await Poll.UntilAsync(() => api.ActiveWatches == 1, "watching");
        api.SendBookmark(); // Marks the end of what the watch sent on its own.
        var events = await EventsUntilBookmarkAsync(reader);

        Assert.Equal(["Added svc-a", "Added svc-c"], events.Order());
    }

    [Fact]
    public async Task Watch_FieldSelectorOnOneName_StreamsOnlyThatSlice()
    {
        // How a client watches one object (client-go's ListWatch with fields.OneTermEqualSelector("metadata.name", n)):
        // a watch of the collection filtered by name; kube-apiserver streams that object's events only.
        await using var api = await SimulatedKubernetesApi.StartAsync();
        api.Apply("default", Slice("svc-a"));
        api.Apply("default", Slice("svc-b"));
        using var http = new HttpClient { BaseAddress = api.Url };

        using var response = await http.GetAsync(
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?watch=true&allowWatchBookmarks=true&fieldSelector=metadata.name%3Dsvc-a",
            HttpCompletionOption.ResponseHeadersRead);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        await Poll.UntilAsync(() => api.ActiveWatches == 1, "watching");
        api.Apply("default", Slice("svc-b"));
        api.Apply("default", Slice("svc-a"));
        api.Delete("default", "svc-b");
        api.Delete("default", "svc-a");
        api.SendBookmark(); // Marks the end of what the watch was sent.
        var events = await EventsUntilBookmarkAsync(reader);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(["Added svc-a", "Modified svc-a", "Deleted svc-a"], events);
    }

    [Theory]
    [InlineData("metadata.name%3Dsvc-a", "svc-a")]
    [InlineData("metadata.name%3D%3Dsvc-a", "svc-a")]
    [InlineData("metadata.name!%3Dsvc-a", "svc-b")]
    [InlineData("metadata.namespace%3Ddefault,metadata.name!%3Dsvc-b", "svc-a")]
    [InlineData("metadata.namespace%3Dother", "")]
    public async Task List_FieldSelector_FiltersByNameAndNamespace(string fieldSelector, string expected)
    {
        await using var api = await SimulatedKubernetesApi.StartAsync();
        api.Apply("default", Slice("svc-a"));
        api.Apply("default", Slice("svc-b"));
        using var http = new HttpClient { BaseAddress = api.Url };

        var json = await http.GetStringAsync($"/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?fieldSelector={fieldSelector}");

        Assert.Equal(expected, string.Join(",", k8s.KubernetesJson.Deserialize<V1EndpointSliceList>(json).Items.Select(s => s.Metadata.Name)));
    }

    [Fact]
    public async Task Get_NamedSliceWithWatchTrue_AnsweredAsAReadAsKubeApiserverDoes()
    {
        // kube-apiserver serves a named path with its GET handler, which reads only GetOptions: watch=true there returns
        // the object and ends (kubernetes/kubernetes#89755, #14289). Pins that the simulator does not stream here.
        await using var api = await SimulatedKubernetesApi.StartAsync();
        api.Apply("default", Slice("svc-a"));
        using var http = new HttpClient { BaseAddress = api.Url };

        var json = await Poll.WithTimeout(
            http.GetStringAsync("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/svc-a?watch=true&resourceVersion=0"),
            "the read to end");

        var slice = k8s.KubernetesJson.Deserialize<V1EndpointSlice>(json);
        Assert.Equal(("EndpointSlice", "svc-a"), (slice.Kind, slice.Metadata.Name));
        Assert.Equal(0, api.WatchCount);
    }

    [Fact]
    public async Task ListAndWatch_ObjectShape_ItemsWithoutTypeWatchObjectsWithIt()
    {
        // On the wire, as kube-apiserver writes a built-in type (kubernetes/kubernetes#3030, #63676): a LIST names the type
        // once (kind EndpointSliceList) and its items carry no apiVersion/kind; every watch event's object carries both.
        // Whatever the writer set: one slice applied with apiVersion/kind, one without.
        await using var api = await SimulatedKubernetesApi.StartAsync();
        var typed = Slice("svc-a");
        typed.ApiVersion = "discovery.k8s.io/v1";
        typed.Kind = "EndpointSlice";
        api.Apply("default", typed);
        api.Apply("default", Slice("svc-b"));
        using var http = new HttpClient { BaseAddress = api.Url };
        const string Path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

        using (var list = System.Text.Json.JsonDocument.Parse(await http.GetStringAsync(Path)))
        {
            Assert.Equal("EndpointSliceList", list.RootElement.GetProperty("kind").GetString());
            Assert.Equal("discovery.k8s.io/v1", list.RootElement.GetProperty("apiVersion").GetString());
            var items = list.RootElement.GetProperty("items").EnumerateArray().ToList();
            Assert.Equal(2, items.Count);
            Assert.All(items, item => Assert.False(item.TryGetProperty("kind", out _) || item.TryGetProperty("apiVersion", out _), item.GetRawText()));
        }

        using var response = await http.GetAsync($"{Path}?watch=true&allowWatchBookmarks=true", HttpCompletionOption.ResponseHeadersRead);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        await Poll.UntilAsync(() => api.ActiveWatches == 1, "watching");
        api.Apply("default", Slice("svc-c"));
        api.Apply("default", Slice("svc-a"));
        api.Delete("default", "svc-b");
        api.SendBookmark();
        var objects = new List<string>();
        while (await Poll.WithTimeout(reader.ReadLineAsync(), "the next watch event") is { } line)
        {
            using var watchEvent = System.Text.Json.JsonDocument.Parse(line);
            var type = watchEvent.RootElement.GetProperty("type").GetString();
            var item = watchEvent.RootElement.GetProperty("object");
            objects.Add($"{type} {(item.TryGetProperty("apiVersion", out var v) ? v.GetString() : "-")} {(item.TryGetProperty("kind", out var k) ? k.GetString() : "-")}");
            if (type == "BOOKMARK")
            {
                break;
            }
        }

        Assert.Equal(
            [.. Enumerable.Repeat("ADDED discovery.k8s.io/v1 EndpointSlice", 3), "MODIFIED discovery.k8s.io/v1 EndpointSlice", "DELETED discovery.k8s.io/v1 EndpointSlice", "BOOKMARK discovery.k8s.io/v1 EndpointSlice"],
            objects);
    }

    [Fact]
    public async Task KubernetesClient_ReadNamespacedEndpointSlice_ReturnsTheSliceAsStored()
    {
        // A GET of one object by name, as a client re-reads a slice it was told about: the stored copy, whole.
        await using var api = await SimulatedKubernetesApi.StartAsync("token-1");
        api.Apply("default", Slice("svc-a"));
        api.Apply("other", Slice("svc-a")); // Same name in another namespace: not the one asked for.
        api.Apply("default", Slice("svc-b"));
        using var client = new k8s.Kubernetes(new k8s.KubernetesClientConfiguration { Host = api.Url.ToString(), AccessToken = "token-1" });

        var slice = await client.DiscoveryV1.ReadNamespacedEndpointSliceAsync("svc-a", "default");

        Assert.Equal(("discovery.k8s.io/v1", "EndpointSlice", "svc-a", "default", "1001"),
            (slice.ApiVersion, slice.Kind, slice.Metadata.Name, slice.Metadata.NamespaceProperty, slice.Metadata.ResourceVersion));
        Assert.Equal("svc", slice.Metadata.Labels["kubernetes.io/service-name"]);
        Assert.Equal("IPv4", slice.AddressType);
        Assert.Equal(["10.0.0.1"], Assert.Single(slice.Endpoints).Addresses);
        Assert.Equal(0, api.ListCount); // A read is not a LIST.
    }

    /// <summary>The watch events read up to the next bookmark, as "Type name".</summary>
    private static async Task<List<string>> EventsUntilBookmarkAsync(StreamReader reader)
    {
        var events = new List<string>();
        while (await Poll.WithTimeout(reader.ReadLineAsync(), "the next watch event") is { } line)
        {
            var watchEvent = k8s.KubernetesJson.Deserialize<k8s.Watcher<V1EndpointSlice>.WatchEvent>(line);
            if (watchEvent.Type == k8s.WatchEventType.Bookmark)
            {
                break;
            }

            events.Add($"{watchEvent.Type} {watchEvent.Object.Metadata.Name}");
        }

        return events;
    }

    private static V1EndpointSlice Slice(string name) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, Labels = new Dictionary<string, string> { ["kubernetes.io/service-name"] = "svc" } },
        AddressType = "IPv4",
        Endpoints = [new V1Endpoint { Addresses = ["10.0.0.1"] }],
    };

    private static async Task<(bool? Ready, bool? Serving, bool? Terminating)> ConditionsAsync(HttpClient http, SimulatedPod pod)
    {
        var conditions = (await ListAsync(http, "default", "svc")).Single(s => s.Metadata.Name == "svc-" + pod.Name).Endpoints.Single().Conditions;
        return (conditions.Ready, conditions.Serving, conditions.Terminating);
    }

    private static async Task<IList<V1EndpointSlice>> ListAsync(HttpClient http, string ns, string service)
    {
        var json = await http.GetStringAsync($"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector=kubernetes.io/service-name={service}");
        return k8s.KubernetesJson.Deserialize<V1EndpointSliceList>(json).Items;
    }

    /// <summary>A client built the way src/ConnectionRefresh.Kubernetes/README.md shows: AddKubernetesResolver, kubernetes:/// target, round_robin.</summary>
    private static ServiceProvider ResolverClient(SimulatedKubernetesApi api, string serviceAccountPath)
    {
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddKubernetesResolver(o =>
        {
            o.ApiServer = api.Url;
            o.ServiceAccountPath = serviceAccountPath;
            o.InitialBackoff = TimeSpan.FromMilliseconds(50);
            o.MaxBackoff = TimeSpan.FromMilliseconds(500);
        });
        services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = new Uri("kubernetes:///greeter.default:grpc"))
            .ConfigureChannel(o =>
            {
                o.Credentials = ChannelCredentials.Insecure;
                o.ServiceConfig = new ServiceConfig { LoadBalancingConfigs = { new RoundRobinConfig() } };
            });
        return services.BuildServiceProvider();
    }

    /// <summary>A temporary service account directory holding a token file.</summary>
    private sealed class TempServiceAccount : IDisposable
    {
        public TempServiceAccount(string token)
        {
            Path = Directory.CreateTempSubdirectory("crsim-sa-").FullName;
            File.WriteAllText(System.IO.Path.Combine(Path, "token"), token);
        }

        public string Path { get; }

        public void Dispose() => Directory.Delete(Path, recursive: true);
    }

    /// <summary>Unary calls without pause on a few workers, bounded in count and time; replies counted per pod.</summary>
    private sealed class CallLoop : IAsyncDisposable
    {
        private const int MaxCallsPerWorker = 200_000;
        private static readonly TimeSpan MaxRun = TimeSpan.FromMinutes(3);
        private readonly CancellationTokenSource _stop = new(MaxRun);
        private readonly Task[] _workers;
        private long _succeeded;

        public CallLoop(Greeter.GreeterClient client, int workers = 4) =>
            _workers = [.. Enumerable.Range(0, workers).Select(_ => Task.Run(() => RunAsync(client)))];

        public ConcurrentDictionary<string, long> Replies { get; } = new();

        public ConcurrentQueue<Exception> Failures { get; } = new();

        public long Succeeded => Interlocked.Read(ref _succeeded);

        public Task WaitForCallsAsync(int calls)
        {
            var target = Succeeded + calls;
            return Poll.UntilAsync(() => Succeeded >= target || !Failures.IsEmpty, $"{calls} more calls");
        }

        /// <summary>Waits until <paramref name="pod"/> served nothing during <paramref name="calls"/> successful calls in a row.</summary>
        public Task WaitForQuietAsync(SimulatedPod pod, int calls)
        {
            var served = pod.CallsServed;
            var from = Succeeded;
            return Poll.UntilAsync(() =>
            {
                if (pod.CallsServed != served)
                {
                    (served, from) = (pod.CallsServed, Succeeded);
                    return false;
                }

                return Succeeded - from >= calls;
            }, $"{calls} calls in a row without {pod.Name}");
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            await Task.WhenAll(_workers);
            _stop.Dispose();
        }

        private async Task RunAsync(Greeter.GreeterClient client)
        {
            for (var i = 0; i < MaxCallsPerWorker && !_stop.IsCancellationRequested; i++)
            {
                try
                {
                    var reply = await client.SayHelloAsync(new HelloRequest { Name = "loop" }, deadline: DateTime.UtcNow.AddSeconds(30), cancellationToken: _stop.Token);
                    Replies.AddOrUpdate(reply.Instance, 1, (_, n) => n + 1);
                    Interlocked.Increment(ref _succeeded);
                }
                catch (RpcException) when (_stop.IsCancellationRequested)
                {
                    return;
                }
                catch (Exception ex)
                {
                    Failures.Enqueue(new InvalidOperationException($"{DateTime.UtcNow:HH:mm:ss.fff}: {ex.Message}", ex));
                }
            }
        }
    }
}
