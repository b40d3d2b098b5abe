using ConnectionRefresh.Kubernetes.Internal;
using ConnectionRefresh.Kubernetes.Tests.Fakes;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace ConnectionRefresh.Kubernetes.Tests;

/// <summary>
/// The endpoint, slice and last-update gauges are observable: every collection reports each service a live resolver watches
/// once (however many resolvers watch it), and a disposed (or stopped) resolver not at all. The API is an in-memory script;
/// time is a FakeTimeProvider.
/// </summary>
public sealed class KubernetesResolverMetricsTests
{
    private const string Endpoints = "connectionrefresh.kubernetes.endpoints";
    private const string EndpointSlices = "connectionrefresh.kubernetes.endpoint_slices";
    private const string LastUpdateTime = "connectionrefresh.kubernetes.last_update_time";

    [Fact]
    public async Task Gauges_LiveResolver_EachCollectionReportsItsCurrentValues()
    {
        // An exporter collects periodically, long after the last change: each collection must see the live resolver.
        var time = new CountingTimeProvider();
        var client = new ScriptedEndpointSliceClient
        {
            OnList = _ => ScriptedEndpointSliceClient.Snapshot("10",
                Slices.Ready("a", "greeter", ["10.0.0.1", "10.0.0.2"], 8080), Slices.Ready("b", "greeter", ["10.0.0.3"], 8080)),
        };
        using var harness = new ResolverHarness(client, time: time);
        await Poll.UntilAsync(() => client.Watches == 1, "listed and watching");
        using var endpoints = new MetricCollector<int>(harness.Meters, KubernetesResolverMetrics.MeterName, Endpoints);
        using var slices = new MetricCollector<int>(harness.Meters, KubernetesResolverMetrics.MeterName, EndpointSlices);
        using var lastUpdate = new MetricCollector<double>(harness.Meters, KubernetesResolverMetrics.MeterName, LastUpdateTime);

        for (var collection = 1; collection <= 2; collection++)
        {
            endpoints.RecordObservableInstruments();
            slices.RecordObservableInstruments();
            lastUpdate.RecordObservableInstruments();

            Assert.Equal(collection, endpoints.GetMeasurementSnapshot().Count);
            var measurement = endpoints.LastMeasurement!;
            Assert.Equal(3, measurement.Value);
            Assert.Equal("greeter", measurement.Tags["k8s.service.name"]);
            Assert.Equal("default", measurement.Tags["k8s.namespace.name"]);
            Assert.Equal(2, slices.LastMeasurement!.Value);
            Assert.Equal(time.GetUtcNow().ToUnixTimeMilliseconds() / 1000.0, lastUpdate.LastMeasurement!.Value);
            Assert.Equal(collection, lastUpdate.GetMeasurementSnapshot().Count);
        }
    }

    [Fact]
    public async Task Gauges_StartedResolverBeforeItsFirstList_ReportsZeroEndpointsAndSlicesAndNoUpdateTime()
    {
        // A resolver that cannot list (API server down, RBAC missing) is live and publishes nothing: "0 endpoints" is what
        // an alert on this gauge needs to see, not silence. It has no update time yet.
        using var held = new HeldList(ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)));
        var client = new ScriptedEndpointSliceClient { OnList = held.Answer };
        using var harness = new ResolverHarness(client, time: new CountingTimeProvider());
        await Poll.UntilAsync(() => held.InFlight, "the first LIST is in flight");
        using var endpoints = new MetricCollector<int>(harness.Meters, KubernetesResolverMetrics.MeterName, Endpoints);
        using var slices = new MetricCollector<int>(harness.Meters, KubernetesResolverMetrics.MeterName, EndpointSlices);
        using var lastUpdate = new MetricCollector<double>(harness.Meters, KubernetesResolverMetrics.MeterName, LastUpdateTime);

        endpoints.RecordObservableInstruments();
        slices.RecordObservableInstruments();
        lastUpdate.RecordObservableInstruments();

        Assert.Equal(0, Assert.Single(endpoints.GetMeasurementSnapshot()).Value);
        Assert.Equal(0, Assert.Single(slices.GetMeasurementSnapshot()).Value);
        Assert.Empty(lastUpdate.GetMeasurementSnapshot());

        held.Release();
        await Poll.UntilAsync(() => client.Watches == 1, "listed and watching");
        endpoints.RecordObservableInstruments();
        lastUpdate.RecordObservableInstruments();
        Assert.Equal(1, endpoints.LastMeasurement!.Value);
        Assert.Single(lastUpdate.GetMeasurementSnapshot());
    }

    [Fact]
    public async Task Gauges_ResolverDisposedWhileItsLoopIsBusy_NoLongerReportedWhileTheOtherResolverStillIs()
    {
        // Two channels, two resolvers, one meter. The first is disposed while its loop is stuck in a LIST (which ignores
        // cancellation here): from Dispose on, it must not be reported, even before its loop has ended.
        var time = new CountingTimeProvider();
        using var meters = new FallbackMeterFactory();
        var metrics = new KubernetesResolverMetrics(meters);
        using var held = new HeldList(ScriptedEndpointSliceClient.Snapshot("20", Slices.Ready("a", "greeter", ["10.0.0.9"], 8080)));
        var greeterClient = new ScriptedEndpointSliceClient
        {
            OnList = n => n == 1 ? ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)) : held.Answer(n),
        };
        var otherClient = new ScriptedEndpointSliceClient
        {
            OnList = _ => ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "other", ["10.0.1.1", "10.0.1.2"], 8080)),
        };
        using var greeter = new ResolverHarness(greeterClient, time: time, random: () => 0.5, metrics: metrics);
        using var other = new ResolverHarness(otherClient, "kubernetes:///other.default:grpc", time: new CountingTimeProvider(), metrics: metrics);
        await Poll.UntilAsync(() => greeterClient.Watches == 1 && time.TimersCreated == 1, "greeter watching with its resync timer armed");
        await Poll.UntilAsync(() => otherClient.Watches == 1, "other watching");
        using var endpoints = new MetricCollector<int>(meters, KubernetesResolverMetrics.MeterName, Endpoints);
        endpoints.RecordObservableInstruments();
        Assert.Equal(2, endpoints.GetMeasurementSnapshot().Count);

        // random 0.5: no jitter; the resync relists, and that LIST is held.
        time.Advance(new KubernetesResolverOptions().ResyncInterval);
        await Poll.UntilAsync(() => held.InFlight, "greeter's resync LIST is in flight");
        greeter.Resolver.Dispose();
        endpoints.Clear();
        endpoints.RecordObservableInstruments();
        held.Release();

        var only = Assert.Single(endpoints.GetMeasurementSnapshot());
        Assert.Equal("other", only.Tags["k8s.service.name"]);
        Assert.Equal(2, only.Value);
    }

    [Fact]
    public async Task Gauges_TwoResolversForTheSameService_ReportedOnceWithTheLatestView()
    {
        // Two channels for one target, two resolvers, one meter: an exporter must see one series per service, not two with the
        // same tags. The one reported is the view updated last; once it is disposed, the other one's.
        var time = new CountingTimeProvider();
        using var meters = new FallbackMeterFactory();
        var metrics = new KubernetesResolverMetrics(meters);
        var firstClient = new ScriptedEndpointSliceClient
        {
            OnList = _ => ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)),
        };
        var secondClient = new ScriptedEndpointSliceClient
        {
            OnList = _ => ScriptedEndpointSliceClient.Snapshot("11",
                Slices.Ready("a", "greeter", ["10.0.0.1", "10.0.0.2"], 8080), Slices.Ready("b", "greeter", ["10.0.0.3"], 8080)),
        };
        using var first = new ResolverHarness(firstClient, time: time, metrics: metrics);
        await Poll.UntilAsync(() => firstClient.Watches == 1, "the first resolver watching");
        var firstUpdate = time.GetUtcNow().ToUnixTimeMilliseconds() / 1000.0;
        time.Advance(TimeSpan.FromSeconds(1));
        using var second = new ResolverHarness(secondClient, time: time, metrics: metrics);
        await Poll.UntilAsync(() => secondClient.Watches == 1, "the second resolver watching");
        using var endpoints = new MetricCollector<int>(meters, KubernetesResolverMetrics.MeterName, Endpoints);
        using var slices = new MetricCollector<int>(meters, KubernetesResolverMetrics.MeterName, EndpointSlices);
        using var lastUpdate = new MetricCollector<double>(meters, KubernetesResolverMetrics.MeterName, LastUpdateTime);

        endpoints.RecordObservableInstruments();
        slices.RecordObservableInstruments();
        lastUpdate.RecordObservableInstruments();

        var measurement = Assert.Single(endpoints.GetMeasurementSnapshot());
        Assert.Equal(3, measurement.Value);
        Assert.Equal("greeter", measurement.Tags["k8s.service.name"]);
        Assert.Equal("default", measurement.Tags["k8s.namespace.name"]);
        Assert.Equal(2, Assert.Single(slices.GetMeasurementSnapshot()).Value);
        Assert.Equal(time.GetUtcNow().ToUnixTimeMilliseconds() / 1000.0, Assert.Single(lastUpdate.GetMeasurementSnapshot()).Value);

        second.Resolver.Dispose();
        endpoints.Clear();
        lastUpdate.Clear();
        endpoints.RecordObservableInstruments();
        lastUpdate.RecordObservableInstruments();
        Assert.Equal(1, Assert.Single(endpoints.GetMeasurementSnapshot()).Value);
        Assert.Equal(firstUpdate, Assert.Single(lastUpdate.GetMeasurementSnapshot()).Value);
    }

    [Fact]
    public async Task Gauges_TwoResolversForTheSameServiceOneNotListedYet_ReportedOnceWithTheListedView()
    {
        // A second channel created later starts at "0 endpoints, no update": that must not hide the first one's view.
        using var meters = new FallbackMeterFactory();
        var metrics = new KubernetesResolverMetrics(meters);
        var listed = new ScriptedEndpointSliceClient
        {
            OnList = _ => ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1", "10.0.0.2"], 8080)),
        };
        using var held = new HeldList(ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1", "10.0.0.2"], 8080)));
        var waiting = new ScriptedEndpointSliceClient { OnList = held.Answer };
        using var first = new ResolverHarness(listed, time: new CountingTimeProvider(), metrics: metrics);
        await Poll.UntilAsync(() => listed.Watches == 1, "the first resolver watching");
        using var second = new ResolverHarness(waiting, time: new CountingTimeProvider(), metrics: metrics);
        await Poll.UntilAsync(() => held.InFlight, "the second resolver's first LIST is in flight");
        using var endpoints = new MetricCollector<int>(meters, KubernetesResolverMetrics.MeterName, Endpoints);

        endpoints.RecordObservableInstruments();
        held.Release(); // Before asserting: a held LIST would keep the harness's Dispose waiting.

        Assert.Equal(2, Assert.Single(endpoints.GetMeasurementSnapshot()).Value);
    }

    [Fact]
    public async Task Gauges_FactoryDisposed_ItsStoppedResolversNoLongerReported()
    {
        // Grpc.Net.ClientFactory never disposes its channels: their resolvers stop when the factory is disposed (with the
        // service provider), without Dispose. A stopped resolver publishes nothing any more, so it is not reported.
        using var meters = new FallbackMeterFactory();
        var client = new ScriptedEndpointSliceClient
        {
            OnList = _ => ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)),
        };
        var factory = new KubernetesResolverFactory(new KubernetesResolverOptions(), new KubernetesResolverMetrics(meters), new CountingTimeProvider(), client, () => 0.5);
        var resolver = factory.CreateResolver(new Uri("kubernetes:///greeter.default:grpc"), NullLoggerFactory.Instance);
        resolver.Start(_ => { });
        await Poll.UntilAsync(() => client.Watches == 1, "listed and watching");
        using var endpoints = new MetricCollector<int>(meters, KubernetesResolverMetrics.MeterName, Endpoints);
        endpoints.RecordObservableInstruments();
        Assert.Equal(1, Assert.Single(endpoints.GetMeasurementSnapshot()).Value);

        factory.Dispose();
        await Poll.WithTimeout(resolver.Completion, "the resolver loop to stop");
        endpoints.Clear();
        endpoints.RecordObservableInstruments();

        Assert.Empty(endpoints.GetMeasurementSnapshot());
        resolver.Dispose();
    }
}
