using System.Net;
using ConnectionRefresh.Kubernetes.Internal;
using ConnectionRefresh.Kubernetes.Tests.Fakes;
using ConnectionRefresh.Testing;
using Grpc.Core;
using k8s;
using k8s.Autorest;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;

namespace ConnectionRefresh.Kubernetes.Tests;

/// <summary>The resolver with the real KubernetesClient against the fake API server (wire format, 410, bookmarks, tokens).</summary>
public sealed class KubernetesResolverApiServerTests
{
    private static readonly KubernetesResolverOptions FastRetry = new() { InitialBackoff = TimeSpan.FromMilliseconds(20), MaxBackoff = TimeSpan.FromMilliseconds(200) };

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Watch_ResourceVersionCompacted_RelistsAndKeepsEndpoints(bool goneAsHttpStatus)
    {
        // The API server's 410 Gone for a compacted resourceVersion, in both forms (kube-apiserver's in-stream ERROR event,
        // or the HTTP status), through the real KubernetesClient: the resolver relists at once ('expired'), not through the
        // error path (a backoff and an errors count), and keeps its endpoints.
        await using var api = await SimulatedKubernetesApi.StartAsync("t");
        api.GoneAsHttpStatus = goneAsHttpStatus;
        api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080));
        using var harness = new ResolverHarness(Client(api, "t"), options: FastRetry);
        using var restarts = new MetricCollector<long>(harness.Meters, KubernetesResolverMetrics.MeterName, "connectionrefresh.kubernetes.watch.restarts");
        using var errors = new MetricCollector<long>(harness.Meters, KubernetesResolverMetrics.MeterName, "connectionrefresh.kubernetes.errors");
        await Poll.UntilAsync(() => api.ActiveWatches == 1, "watching");

        // The watch delivers an event (so the resolver resumes from that event's resourceVersion when the watch ends), another
        // service changes (the resourceVersion moves on), history is compacted and the watch drops: the resumed watch gets
        // 410 Gone, so the resolver must relist.
        api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.1", "10.0.0.2"], 8080));
        await Poll.UntilAsync(() => harness.LastAddresses?.Count == 2, "the watch event applied");
        api.Apply("default", Slices.Ready("x", "other", ["10.9.9.9"], 8080));
        api.Compact();
        api.CloseWatches();
        await Poll.UntilAsync(() => api.ListCount == 2 && api.ActiveWatches == 1, "relisted after 410 Gone and watching again");
        Assert.Equal(["closed", "expired"], restarts.GetMeasurementSnapshot().Select(m => (string)m.Tags["reason"]!));
        Assert.Empty(errors.GetMeasurementSnapshot());

        api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.1", "10.0.0.2", "10.0.0.3"], 8080));
        await Poll.UntilAsync(() => harness.LastAddresses?.Count == 3, "updates after the relist");
        Assert.All(harness.Results, r => Assert.Equal(StatusCode.OK, r.Status.StatusCode));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Watch_ResumedWatchGets410_TheRealClientsGoneRelistsAtOnceAsExpired(bool goneAsHttpStatus)
    {
        // End to end through KubernetesClient: both forms of 410 reach the resolver as an expired resourceVersion, and a
        // resumed watch's 410 is answered by a relist, not an error and a backoff. The same as
        // Watch_ResourceVersionCompacted_... above, against hand-written Status bytes rather than SimulatedKubernetesApi's.
        await using var api = await GoneOnResumeApi.StartAsync(Slices.Ready("a", "greeter", ["10.0.0.1"], 8080), goneAsHttpStatus);
        // A backoff long enough to tell apart from an immediate relist on any machine.
        var options = new KubernetesResolverOptions { InitialBackoff = TimeSpan.FromMinutes(1), MaxBackoff = TimeSpan.FromMinutes(1) };
        var client = new KubernetesEndpointSliceClient(new k8s.Kubernetes(new KubernetesClientConfiguration { Host = api.Url.ToString() }));
        using var harness = new ResolverHarness(client, options: options);
        using var restarts = new MetricCollector<long>(harness.Meters, KubernetesResolverMetrics.MeterName, "connectionrefresh.kubernetes.watch.restarts");
        using var errors = new MetricCollector<long>(harness.Meters, KubernetesResolverMetrics.MeterName, "connectionrefresh.kubernetes.errors");

        await Poll.UntilAsync(() => api.Lists == 2 && api.Watches == 3, "relisted after the 410 and watching again");
        Assert.Equal(["closed", "expired"], restarts.GetMeasurementSnapshot().Select(m => (string)m.Tags["reason"]!));
        Assert.Empty(errors.GetMeasurementSnapshot());
    }

    [Fact]
    public async Task Watch_Bookmark_AdvancesResourceVersionSoNoRelistIsNeeded()
    {
        await using var api = await SimulatedKubernetesApi.StartAsync("t");
        api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080));
        using var harness = new ResolverHarness(Client(api, "t"), options: FastRetry);
        await Poll.UntilAsync(() => api.ActiveWatches == 1, "watching");

        var watches = api.WatchCount;
        api.Apply("default", Slices.Ready("x", "other", ["10.9.9.9"], 8080));
        api.SendBookmark();
        // The bookmark is queued on the watch before the watch ends, so the resolver reads it and watches again from its
        // resourceVersion, which the compaction keeps valid (the list's older one would get 410 Gone and a relist, before the
        // next watch). Closed once: closing the new watch as well would end it at once, which the resolver rightly answers
        // with a backoff and a relist (this test used to close watches until one had restarted, and passed only when its
        // assertion ran before that relist).
        api.Compact();
        api.CloseWatches();
        await Poll.UntilAsync(() => api.WatchCount > watches && api.ActiveWatches == 1, "re-watching");
        Assert.Equal(1, api.ListCount);
    }

    [Fact]
    public async Task Token_Wrong_FailsFastThenRecoversWhenTheFileIsFixed()
    {
        await using var api = await SimulatedKubernetesApi.StartAsync("good");
        api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080));
        using var account = new ServiceAccountDirectory("bad");
        var configuration = new KubernetesClientConfiguration
        {
            Host = api.Url.ToString(),
            TokenProvider = new ServiceAccountTokenProvider(Path.Combine(account.Path, "token"), required: true),
        };
        using var kubernetes = new k8s.Kubernetes(configuration);
        using var harness = new ResolverHarness(new KubernetesEndpointSliceClient(kubernetes), options: FastRetry);

        // The API server's 401 reaches the resolver as a 401: the failure names the bearer token and carries the Status.
        await Poll.UntilAsync(() => harness.Last?.Status.StatusCode == StatusCode.Unavailable, "401 reported as Unavailable");
        var detail = harness.Last!.Status.Detail;
        Assert.Contains("(401 Unauthorized)", detail, StringComparison.Ordinal);
        Assert.Contains("check the bearer token", detail, StringComparison.Ordinal);
        Assert.Contains("\"reason\":\"Unauthorized\"", detail, StringComparison.Ordinal);
        account.WriteToken("good");
        await Poll.UntilAsync(() => harness.LastAddresses?.Count == 1, "resolved with the new token");
        Assert.Equal("bad", api.SeenTokens.First());
    }

    [Theory]
    [InlineData(HttpStatusCode.Unauthorized, "Unauthorized", "401 Unauthorized", "check the bearer token")]
    [InlineData(HttpStatusCode.Forbidden, "Forbidden", "403 Forbidden", "needs the verbs 'list' and 'watch' on 'endpointslices' (API group 'discovery.k8s.io') in namespace 'default'")]
    public async Task List_RefusedByTheApiServer_CallsFailNamingWhatToFixNotAnUnreachableServer(HttpStatusCode status, string reason, string expectedCode, string expectedHint)
    {
        // A missing Role (403) or a bad token (401) is the usual setup mistake; "could not be reached" sent users to the
        // network. The exception is the one KubernetesClient throws for a refused request (its SendRequestRaw builds it
        // this way, with the API server's Status as the body); the fake API server does not answer 403.
        var body = $$"""{"kind":"Status","apiVersion":"v1","status":"Failure","message":"endpointslices.discovery.k8s.io is forbidden: User \"system:serviceaccount:default:client\" cannot list resource \"endpointslices\"","reason":"{{reason}}","code":{{(int)status}}}""";
        var client = new ScriptedEndpointSliceClient
        {
            OnList = _ => throw new HttpOperationException($"Operation returned an invalid status code '{status}', response body {body}")
            {
                Response = new HttpResponseMessageWrapper(new HttpResponseMessage(status), body),
            },
        };
        using var harness = new ResolverHarness(client, options: FastRetry);

        await Poll.UntilAsync(() => harness.Last?.Status.StatusCode == StatusCode.Unavailable, "the refusal reported as Unavailable");
        var detail = harness.Last!.Status.Detail;
        Assert.Contains(expectedCode, detail, StringComparison.Ordinal);
        Assert.Contains(expectedHint, detail, StringComparison.Ordinal);
        Assert.Contains("service 'greeter' in namespace 'default'", detail, StringComparison.Ordinal);
        Assert.Contains("cannot list resource", detail, StringComparison.Ordinal); // The API server's own words follow.
        Assert.DoesNotContain("could not be reached", detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task NamedPort_DifferentNumberPerSlice_ResolvedPerSlice()
    {
        await using var api = await SimulatedKubernetesApi.StartAsync("t");
        api.Apply("default", Slices.Create("a", "greeter", [("10.0.0.1", true)], ("grpc", 8080), ("metrics", 9090)));
        api.Apply("default", Slices.Create("b", "greeter", [("10.0.0.2", true)], ("metrics", 9090), ("grpc", 8081)));
        api.Apply("default", Slices.Create("c", "greeter", [("10.0.0.3", true)], ("http", 80)));
        using var harness = new ResolverHarness(Client(api, "t"), options: FastRetry);

        await Poll.UntilAsync(() => harness.LastAddresses is not null, "resolved");
        Assert.Equal(["10.0.0.1:8080", "10.0.0.2:8081"], harness.LastAddresses!.Order());
    }

    [Fact]
    public async Task DualStack_SlicePerFamily_OneAddressPerPod()
    {
        await using var api = await SimulatedKubernetesApi.StartAsync("t");
        api.Apply("default", Slices.Family("greeter-v4", "greeter", "IPv4", 8080, ("10.0.0.1", "greeter-1"), ("10.0.0.2", "greeter-2")));
        api.Apply("default", Slices.Family("greeter-v6", "greeter", "IPv6", 8080, ("fd00::1", "greeter-1"), ("fd00::2", "greeter-2")));
        using var harness = new ResolverHarness(Client(api, "t"), options: FastRetry);
        await Poll.UntilAsync(() => harness.LastAddresses is not null && api.ActiveWatches == 1, "resolved and watching");
        Assert.Equal(["10.0.0.1:8080", "10.0.0.2:8080"], harness.LastAddresses!.Order());

        // A new pod reaches the IPv6 slice first: it is used at once, by its IPv6 address, until the IPv4 slice lists it.
        api.Apply("default", Slices.Family("greeter-v6", "greeter", "IPv6", 8080, ("fd00::1", "greeter-1"), ("fd00::2", "greeter-2"), ("fd00::3", "greeter-3")));
        await Poll.UntilAsync(() => harness.LastAddresses?.Count == 3, "the new pod published");
        Assert.Equal(["10.0.0.1:8080", "10.0.0.2:8080", "fd00::3:8080"], harness.LastAddresses!.Order()); // BalancerAddress prints no brackets.
        api.Apply("default", Slices.Family("greeter-v4", "greeter", "IPv4", 8080, ("10.0.0.1", "greeter-1"), ("10.0.0.2", "greeter-2"), ("10.0.0.3", "greeter-3")));
        await Poll.UntilAsync(() => harness.LastAddresses?.Contains("10.0.0.3:8080") == true, "the new pod moved to IPv4");
        Assert.Equal(["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"], harness.LastAddresses!.Order());
    }

    [Fact]
    public async Task Target_NamespaceInAuthority_WatchesThatNamespaceOnly()
    {
        await using var api = await SimulatedKubernetesApi.StartAsync("t");
        api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080));
        api.Apply("prod", Slices.Ready("a", "greeter", ["10.1.0.1"], 8080));
        using var harness = new ResolverHarness(Client(api, "t"), target: "kubernetes://prod/greeter:8080", options: FastRetry);

        await Poll.UntilAsync(() => harness.LastAddresses is not null, "resolved");
        Assert.Equal(["10.1.0.1:8080"], harness.LastAddresses!);
    }

    private static KubernetesEndpointSliceClient Client(SimulatedKubernetesApi api, string token) =>
        new(new k8s.Kubernetes(new KubernetesClientConfiguration { Host = api.Url.ToString(), AccessToken = token }));
}
