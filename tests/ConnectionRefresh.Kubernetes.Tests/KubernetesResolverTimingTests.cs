using ConnectionRefresh.Kubernetes.Internal;
using ConnectionRefresh.Kubernetes.Tests.Fakes;
using Grpc.Core;
using k8s;
using k8s.Models;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;

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
        using var watching = await WatchingResolver.StartAsync(new KubernetesResolverOptions { ResyncInterval = TimeSpan.FromMinutes(1) });

        watching.Time.Advance(TimeSpan.FromSeconds(59));
        Assert.Equal(1, watching.Client.Lists);
        watching.Time.Advance(TimeSpan.FromSeconds(1));
        await Poll.UntilAsync(() => watching.Client.Lists == 2 && watching.Client.Watches == 2, "relisted and watching again");
    }

    [Fact]
    public async Task Refresh_WhileTheWatchIsLive_AnsweredByTheWatchWithoutRelisting()
    {
        // grpc-dotnet calls Refresh() whenever a subchannel goes idle (every GOAWAY): a live watch already has every change.
        using var watching = await WatchingResolver.StartAsync();

        watching.Time.Advance(KubernetesResolverDefaults.WatchLivenessWindow - TimeSpan.FromSeconds(1));
        watching.Resolver.Refresh();
        watching.Resolver.Refresh();
        watching.Time.Advance(KubernetesResolverDefaults.MinRefreshInterval); // a relist for those requests would be due now

        await watching.AssertTheSameWatchDeliversAsync("10.0.0.2");
        Assert.Equal(1, watching.Client.Lists);
        Assert.Equal(1, watching.Client.Watches);
        Assert.Equal(2, watching.Logger.Collector.GetSnapshot().Count(r => r.Id.Id == RefreshAnsweredByWatchId));
        Assert.DoesNotContain(watching.Logger.Collector.GetSnapshot(), r => r.Id.Id == RefreshRelistingId);
    }

    [Fact]
    public async Task Refresh_WatchSilentLongerThanTheLivenessWindow_Relists()
    {
        // The safety net: a watch that delivered nothing, not even a bookmark, for longer than the window may have stopped
        // delivering without an error; a refresh request then relists.
        using var watching = await WatchingResolver.StartAsync();

        watching.Time.Advance(KubernetesResolverDefaults.WatchLivenessWindow - TimeSpan.FromSeconds(1));
        watching.Resolver.Refresh();
        await watching.AssertTheSameWatchDeliversAsync("10.0.0.2");
        Assert.Equal(1, watching.Client.Lists);

        // That event was the watch's last sign of life.
        watching.Time.Advance(KubernetesResolverDefaults.WatchLivenessWindow + TimeSpan.FromSeconds(1));
        watching.Resolver.Refresh();
        await Poll.UntilAsync(() => watching.Client.Lists == 2 && watching.Client.Watches == 2, "relisted and watching again");
        Assert.Single(watching.Logger.Collector.GetSnapshot(), r => r.Id.Id == RefreshRelistingId);
    }

    [Fact]
    public async Task Refresh_BookmarkWithinTheLivenessWindow_KeepsTheWatchLive()
    {
        // On a quiet Service a bookmark (the API server sends one about once a minute) is the watch's only sign of life.
        using var watching = await WatchingResolver.StartAsync();

        watching.Time.Advance(TimeSpan.FromSeconds(60));
        watching.Client.Events.Writer.TryWrite(new EndpointSliceEvent(WatchEventType.Bookmark, new V1EndpointSlice { Metadata = new() { ResourceVersion = "11" } }));
        await Poll.UntilAsync(() => watching.Resolver.WatchActivityTimestamp == watching.Time.GetTimestamp(), "the bookmark was read");

        // Longer than the window since the watch started, shorter since the bookmark.
        watching.Time.Advance(KubernetesResolverDefaults.WatchLivenessWindow - TimeSpan.FromSeconds(1));
        watching.Resolver.Refresh();
        await watching.AssertTheSameWatchDeliversAsync("10.0.0.2");
        Assert.Equal(1, watching.Client.Lists);
        Assert.Equal(1, watching.Client.Watches);
    }

    [Fact]
    public async Task Refresh_WhileBackingOffAfterTheWatchFailed_RelistsOnceWhenTheBackoffEnds()
    {
        // The failed watch showed life a moment ago, but it is gone: the request is not answered by it. The LIST after the
        // backoff answers it (no earlier and no second LIST); the new watch then answers the next request.
        using var watching = await WatchingResolver.StartAsync(new KubernetesResolverOptions { InitialBackoff = TimeSpan.FromSeconds(1) });

        var events = watching.Client.Events;
        events.Writer.TryWrite(new EndpointSliceEvent(WatchEventType.Bookmark, new V1EndpointSlice { Metadata = new() { ResourceVersion = "11" } }));
        events.Writer.TryComplete(new IOException("connection reset"));
        await Poll.UntilAsync(() => watching.Time.TimersCreated == 2, "the failure's backoff is armed");

        watching.Resolver.Refresh();
        Assert.Single(watching.Logger.Collector.GetSnapshot(), r => r.Id.Id == RefreshRelistingId);
        Assert.Equal(1, watching.Client.Lists);
        watching.Time.Advance(TimeSpan.FromSeconds(1));
        await Poll.UntilAsync(() => watching.Client.Lists == 2 && watching.Client.Watches == 2, "relisted after the backoff and watching again");

        watching.Resolver.Refresh();
        await watching.AssertTheSameWatchDeliversAsync("10.0.0.2");
        Assert.Equal(2, watching.Client.Lists);
        Assert.Equal(2, watching.Client.Watches);
        Assert.Single(watching.Logger.Collector.GetSnapshot(), r => r.Id.Id == RefreshAnsweredByWatchId);
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

    [Fact]
    public async Task Refresh_WallClockSteppedBack_RelistsAtOnceInsteadOfWaitingOutTheStep()
    {
        // NTP or a VM resume can step the wall clock back. The minimum refresh interval is elapsed time: measured on the
        // wall clock, a step back of an hour made a refresh relist wait an hour, with no watch running meanwhile.
        var time = new SteppedClockTimeProvider();
        var client = new ScriptedEndpointSliceClient { OnList = _ => ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)) };
        using var harness = new ResolverHarness(client, time: time, random: () => 0.5);
        await Poll.UntilAsync(() => client.Watches == 1 && time.TimersCreated == 1, "watching with the resync timer armed");

        // Silent for longer than the liveness window (and well before the 5 min resync), then the clock steps back.
        time.Advance(KubernetesResolverDefaults.WatchLivenessWindow + TimeSpan.FromSeconds(1));
        time.StepWallClock(TimeSpan.FromHours(-1));
        harness.Resolver.Refresh();

        // The fake clock does not move from here: only a relist that waits for nothing can happen.
        await Poll.UntilAsync(() => client.Lists == 2 && client.Watches == 2, "relisted and watching again");
    }

    [Fact]
    public async Task Watch_ResumedAfterAHealthyWatchGets410_RelistsAtOnceAsExpiredNotAsAnError()
    {
        // The usual 410: the server closes a healthy watch (its timeout), the resolver resumes from the last resourceVersion
        // it saw, and that one is gone (compacted, or a restarted API server's watch cache starts later). The new watch
        // fails at once, which is expected: relist without a backoff, a warning or an error count.
        var time = new CountingTimeProvider();
        var client = new ScriptedEndpointSliceClient { OnList = _ => ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)) };
        using var harness = new ResolverHarness(client, time: time);
        using var restarts = new MetricCollector<long>(harness.Meters, KubernetesResolverMetrics.MeterName, "connectionrefresh.kubernetes.watch.restarts");
        using var errors = new MetricCollector<long>(harness.Meters, KubernetesResolverMetrics.MeterName, "connectionrefresh.kubernetes.errors");
        await Poll.UntilAsync(() => client.Watches == 1, "watching");

        var changed = Slices.Ready("a", "greeter", ["10.0.0.1", "10.0.0.2"], 8080);
        changed.Metadata.ResourceVersion = "11";
        client.Events.Writer.TryWrite(new EndpointSliceEvent(WatchEventType.Modified, changed));
        client.Events.Writer.TryComplete();
        await Poll.UntilAsync(() => client.Watches == 2, "resumed from the event's resourceVersion");
        client.Events.Writer.TryComplete(new ResourceVersionExpiredException("too old resource version: 11 (20)"));

        // The fake clock never moves: a backoff would hold the relist (its timer is the second one, after the resync's).
        await Poll.UntilAsync(() => client.Lists == 2 || time.TimersCreated > 2, "relisted, or a backoff armed");
        Assert.Equal(2, client.Lists);
        Assert.Equal(["closed", "expired"], restarts.GetMeasurementSnapshot().Select(m => (string)m.Tags["reason"]!));
        Assert.Empty(errors.GetMeasurementSnapshot());
        Assert.Equal("11", client.WatchResourceVersions.ElementAt(1)); // The second watch resumed from the event.
    }

    [Fact]
    public async Task Metrics_WatchFails_CountedAsARestartWithReasonError()
    {
        // The instrument's description names the reasons resync, refresh, expired, closed and error: a watch that fails (or
        // that the server closes at once) is started again after the backoff, and counts as a restart with reason error.
        var time = new CountingTimeProvider();
        var client = new ScriptedEndpointSliceClient { OnList = _ => ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)) };
        using var harness = new ResolverHarness(client, options: new KubernetesResolverOptions { InitialBackoff = TimeSpan.FromSeconds(1) }, time: time);
        using var restarts = new MetricCollector<long>(harness.Meters, KubernetesResolverMetrics.MeterName, "connectionrefresh.kubernetes.watch.restarts");
        await Poll.UntilAsync(() => client.Watches == 1 && time.TimersCreated == 1, "watching");

        client.Events.Writer.TryComplete(new IOException("connection reset"));
        await Poll.UntilAsync(() => time.TimersCreated == 2, "the failure's backoff is armed");
        time.Advance(TimeSpan.FromSeconds(1));
        await Poll.UntilAsync(() => client.Watches == 2, "watching again after the backoff");

        var restart = Assert.Single(restarts.GetMeasurementSnapshot());
        Assert.Equal("error", restart.Tags["reason"]);
        Assert.Equal("greeter", restart.Tags["k8s.service.name"]);
    }

    private const int RefreshRelistingId = 6;
    private const int RefreshAnsweredByWatchId = 9;
}
