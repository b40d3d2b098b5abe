using ConnectionRefresh.Kubernetes.Internal;
using ConnectionRefresh.Kubernetes.Tests.Fakes;
using Grpc.Core;
using k8s;
using k8s.Models;
using Microsoft.Extensions.Logging.Testing;

namespace ConnectionRefresh.Kubernetes.Tests;

/// <summary>Backoff, resync and refresh driven by a FakeTimeProvider; the API is an in-memory script.</summary>
public sealed class KubernetesResolverTimingTests
{
    [Fact]
    public async Task Backoff_ApiUnreachable_RetriesAfterJitteredExponentialDelays()
    {
        var time = new CountingTimeProvider();
        var client = new ScriptedEndpointSliceClient { OnList = _ => throw new HttpRequestException("connection refused") };
        var randoms = new Queue<double>([0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5]);
        var options = new KubernetesResolverOptions { InitialBackoff = TimeSpan.FromSeconds(1), MaxBackoff = TimeSpan.FromSeconds(4) };
        using var harness = new ResolverHarness(client, options: options, time: time, random: () => randoms.Dequeue());

        // base 1, 2, 4, 4 (cap), 4 seconds; jitter factor 0.8 for random 0, 1.2 for random 1.
        TimeSpan[] expected = [TimeSpan.FromSeconds(0.8), TimeSpan.FromSeconds(2.4), TimeSpan.FromSeconds(3.2), TimeSpan.FromSeconds(4.8)];
        for (var i = 0; i < expected.Length; i++)
        {
            var timers = i + 1;
            await Poll.UntilAsync(() => client.Lists == i + 1 && time.TimersCreated == timers, $"attempt {i + 1} failed and its delay is armed");
            time.Advance(expected[i] - TimeSpan.FromMilliseconds(1));
            Assert.Equal(i + 1, client.Lists);
            time.Advance(TimeSpan.FromMilliseconds(1));
        }

        await Poll.UntilAsync(() => client.Lists == expected.Length + 1, "the fifth attempt");
        // Nothing was ever known: each failure is published, so calls fail fast instead of waiting.
        Assert.All(harness.Results, r => Assert.Equal(StatusCode.Unavailable, r.Status.StatusCode));
    }

    [Fact]
    public async Task Backoff_HealthyWatchThenFailure_RestartsFromInitialDelay()
    {
        var time = new CountingTimeProvider();
        var client = new ScriptedEndpointSliceClient
        {
            OnList = n => n <= 2 ? throw new HttpRequestException("down") : ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)),
        };
        var options = new KubernetesResolverOptions { InitialBackoff = TimeSpan.FromSeconds(1), MaxBackoff = TimeSpan.FromSeconds(30) };
        using var harness = new ResolverHarness(client, options: options, time: time, random: () => 0.5);

        await Poll.UntilAsync(() => client.Lists == 1 && time.TimersCreated == 1, "first failure");
        time.Advance(TimeSpan.FromSeconds(1));
        await Poll.UntilAsync(() => client.Lists == 2 && time.TimersCreated == 2, "second failure");
        time.Advance(TimeSpan.FromSeconds(2));
        await Poll.UntilAsync(() => client.Watches == 1, "third attempt lists and watches");

        // The watch delivers an event (healthy), then breaks: the next delay is the initial one again, not 4 s.
        var events = client.Events;
        events.Writer.TryWrite(new EndpointSliceEvent(WatchEventType.Bookmark, new k8s.Models.V1EndpointSlice { Metadata = new() { ResourceVersion = "11" } }));
        events.Writer.TryComplete(new IOException("connection reset"));
        await Poll.UntilAsync(() => time.TimersCreated == 4, "the failure's delay is armed (after the watch's resync timer)");
        time.Advance(TimeSpan.FromSeconds(1));
        await Poll.UntilAsync(() => client.Lists == 4, "relisted after the initial delay");
        Assert.All(harness.Results, r => Assert.True(r.Status.StatusCode != StatusCode.OK || r.Addresses!.Count == 1));
        Assert.DoesNotContain(harness.Results.SkipWhile(r => r.Status.StatusCode != StatusCode.OK), r => r.Status.StatusCode != StatusCode.OK);
    }

    [Fact]
    public async Task Resync_IntervalElapses_Relists()
    {
        var time = new CountingTimeProvider();
        var client = new ScriptedEndpointSliceClient { OnList = n => ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)) };
        var options = new KubernetesResolverOptions { ResyncInterval = TimeSpan.FromMinutes(1) };
        using var harness = new ResolverHarness(client, options: options, time: time, random: () => 0.5);

        await Poll.UntilAsync(() => client.Watches == 1 && time.TimersCreated == 1, "watching with the resync timer armed");
        time.Advance(TimeSpan.FromSeconds(59));
        Assert.Equal(1, client.Lists);
        time.Advance(TimeSpan.FromSeconds(1));
        await Poll.UntilAsync(() => client.Lists == 2 && client.Watches == 2, "relisted and watching again");
    }

    [Fact]
    public async Task Refresh_WhileTheWatchIsLive_AnsweredByTheWatchWithoutRelisting()
    {
        // grpc-dotnet calls Refresh() whenever a subchannel goes idle (every GOAWAY): a live watch already has every change.
        var time = new CountingTimeProvider();
        var logger = new FakeLogger();
        var client = new ScriptedEndpointSliceClient { OnList = _ => ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)) };
        using var harness = new ResolverHarness(client, time: time, random: () => 0.5, logger: logger);
        await Poll.UntilAsync(() => client.Watches == 1 && time.TimersCreated == 1, "watching with the resync timer armed");

        time.Advance(KubernetesResolverDefaults.WatchLivenessWindow - TimeSpan.FromSeconds(1));
        harness.Resolver.Refresh();
        harness.Resolver.Refresh();
        time.Advance(KubernetesResolverDefaults.MinRefreshInterval); // a relist for those requests would be due now

        await AssertTheSameWatchDeliversAsync(client, harness, "10.0.0.2");
        Assert.Equal(1, client.Lists);
        Assert.Equal(1, client.Watches);
        Assert.Equal(2, logger.Collector.GetSnapshot().Count(r => r.Id.Id == RefreshAnsweredByWatchId));
        Assert.DoesNotContain(logger.Collector.GetSnapshot(), r => r.Id.Id == RefreshRelistingId);
    }

    [Fact]
    public async Task Refresh_WatchSilentLongerThanTheLivenessWindow_Relists()
    {
        // The safety net: a watch that delivered nothing, not even a bookmark, for longer than the window may have stopped
        // delivering without an error; a refresh request then relists.
        var time = new CountingTimeProvider();
        var logger = new FakeLogger();
        var client = new ScriptedEndpointSliceClient { OnList = _ => ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)) };
        using var harness = new ResolverHarness(client, time: time, random: () => 0.5, logger: logger);
        await Poll.UntilAsync(() => client.Watches == 1 && time.TimersCreated == 1, "watching with the resync timer armed");

        time.Advance(KubernetesResolverDefaults.WatchLivenessWindow - TimeSpan.FromSeconds(1));
        harness.Resolver.Refresh();
        await AssertTheSameWatchDeliversAsync(client, harness, "10.0.0.2");
        Assert.Equal(1, client.Lists);

        // That event was the watch's last sign of life.
        time.Advance(KubernetesResolverDefaults.WatchLivenessWindow + TimeSpan.FromSeconds(1));
        harness.Resolver.Refresh();
        await Poll.UntilAsync(() => client.Lists == 2 && client.Watches == 2, "relisted and watching again");
        Assert.Single(logger.Collector.GetSnapshot(), r => r.Id.Id == RefreshRelistingId);
    }

    [Fact]
    public async Task Refresh_BookmarkWithinTheLivenessWindow_KeepsTheWatchLive()
    {
        // On a quiet Service a bookmark (the API server sends one about once a minute) is the watch's only sign of life.
        var time = new CountingTimeProvider();
        var client = new ScriptedEndpointSliceClient { OnList = _ => ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)) };
        using var harness = new ResolverHarness(client, time: time, random: () => 0.5);
        await Poll.UntilAsync(() => client.Watches == 1 && time.TimersCreated == 1, "watching with the resync timer armed");

        time.Advance(TimeSpan.FromSeconds(60));
        client.Events.Writer.TryWrite(new EndpointSliceEvent(WatchEventType.Bookmark, new V1EndpointSlice { Metadata = new() { ResourceVersion = "11" } }));
        await Poll.UntilAsync(() => harness.Resolver.WatchActivityTimestamp == time.GetTimestamp(), "the bookmark was read");

        // Longer than the window since the watch started, shorter since the bookmark.
        time.Advance(KubernetesResolverDefaults.WatchLivenessWindow - TimeSpan.FromSeconds(1));
        harness.Resolver.Refresh();
        await AssertTheSameWatchDeliversAsync(client, harness, "10.0.0.2");
        Assert.Equal(1, client.Lists);
        Assert.Equal(1, client.Watches);
    }

    [Fact]
    public async Task Refresh_WhileBackingOffAfterTheWatchFailed_RelistsOnceWhenTheBackoffEnds()
    {
        // The failed watch showed life a moment ago, but it is gone: the request is not answered by it. The LIST after the
        // backoff answers it (no earlier and no second LIST); the new watch then answers the next request.
        var time = new CountingTimeProvider();
        var logger = new FakeLogger();
        var client = new ScriptedEndpointSliceClient { OnList = _ => ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)) };
        var options = new KubernetesResolverOptions { InitialBackoff = TimeSpan.FromSeconds(1) };
        using var harness = new ResolverHarness(client, options: options, time: time, random: () => 0.5, logger: logger);
        await Poll.UntilAsync(() => client.Watches == 1 && time.TimersCreated == 1, "watching with the resync timer armed");

        var events = client.Events;
        events.Writer.TryWrite(new EndpointSliceEvent(WatchEventType.Bookmark, new V1EndpointSlice { Metadata = new() { ResourceVersion = "11" } }));
        events.Writer.TryComplete(new IOException("connection reset"));
        await Poll.UntilAsync(() => time.TimersCreated == 2, "the failure's backoff is armed");

        harness.Resolver.Refresh();
        Assert.Single(logger.Collector.GetSnapshot(), r => r.Id.Id == RefreshRelistingId);
        Assert.Equal(1, client.Lists);
        time.Advance(TimeSpan.FromSeconds(1));
        await Poll.UntilAsync(() => client.Lists == 2 && client.Watches == 2, "relisted after the backoff and watching again");

        harness.Resolver.Refresh();
        await AssertTheSameWatchDeliversAsync(client, harness, "10.0.0.2");
        Assert.Equal(2, client.Lists);
        Assert.Equal(2, client.Watches);
        Assert.Single(logger.Collector.GetSnapshot(), r => r.Id.Id == RefreshAnsweredByWatchId);
    }

    [Fact]
    public async Task Watch_Events_UpdateUnionAndDeletedRemovesOnlyThatSlice()
    {
        var client = new ScriptedEndpointSliceClient { OnList = _ => ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1", "10.0.0.2"], 8080)) };
        using var harness = new ResolverHarness(client);
        await Poll.UntilAsync(() => client.Watches == 1, "watching");
        Assert.Equal(["10.0.0.1:8080", "10.0.0.2:8080"], harness.LastAddresses!.Order());

        var b = Slices.Ready("b", "greeter", ["10.0.0.2", "10.0.0.3"], 8080);
        b.Metadata.ResourceVersion = "11";
        client.Events.Writer.TryWrite(new EndpointSliceEvent(WatchEventType.Added, b));
        await Poll.UntilAsync(() => harness.LastAddresses!.Count == 3, "union of both slices, de-duplicated");

        var a = Slices.Ready("a", "greeter", ["10.0.0.1", "10.0.0.2"], 8080);
        a.Metadata.ResourceVersion = "12";
        client.Events.Writer.TryWrite(new EndpointSliceEvent(WatchEventType.Deleted, a));
        await Poll.UntilAsync(() => harness.LastAddresses!.SetEquals(["10.0.0.2:8080", "10.0.0.3:8080"]), "only slice b's endpoints remain");
        Assert.All(harness.Results, r => Assert.Equal(StatusCode.OK, r.Status.StatusCode));
    }

    private const int RefreshRelistingId = 6;
    private const int RefreshAnsweredByWatchId = 9;

    /// <summary>
    /// Writes an event to the current watch and waits for its effect: proof that the watch still runs. A relist would make
    /// the event arrive only through a new watch, after the LIST the test then sees counted.
    /// </summary>
    private static async Task AssertTheSameWatchDeliversAsync(ScriptedEndpointSliceClient client, ResolverHarness harness, string addedIp)
    {
        var slice = Slices.Ready("b", "greeter", [addedIp], 8080);
        slice.Metadata.ResourceVersion = "20";
        client.Events.Writer.TryWrite(new EndpointSliceEvent(WatchEventType.Added, slice));
        await Poll.UntilAsync(() => harness.LastAddresses?.Contains($"{addedIp}:8080") == true, $"the watch delivered {addedIp}");
    }
}
