using System.Net;
using ConnectionRefresh.Kubernetes.Tests.Fakes;
using Grpc.Core;
using k8s.Autorest;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using Microsoft.Extensions.Time.Testing;

namespace ConnectionRefresh.Kubernetes.Tests;

/// <summary>What the resolver's logs and the status of failing calls tell a user to fix; the API is an in-memory script.</summary>
public sealed class KubernetesResolverMessagesTests
{
    [Theory]
    [InlineData(HttpStatusCode.NotFound, "404 NotFound", "version 1.21 or later")]
    [InlineData(HttpStatusCode.InternalServerError, "500 InternalServerError", "")]
    [InlineData(HttpStatusCode.TooManyRequests, "429 TooManyRequests", "")]
    public async Task List_AnsweredWithAnotherErrorStatus_CallsSayTheServerAnsweredNotThatItCouldNotBeReached(HttpStatusCode status, string expectedCode, string expectedHint)
    {
        // The exception KubernetesClient throws for a status it does not expect (see List_RefusedByTheApiServer_...).
        var body = $$"""{"kind":"Status","apiVersion":"v1","status":"Failure","message":"the server could not find the requested resource","code":{{(int)status}}}""";
        var client = new ScriptedEndpointSliceClient
        {
            OnList = _ => throw new HttpOperationException($"Operation returned an invalid status code '{status}', response body {body}")
            {
                Response = new HttpResponseMessageWrapper(new HttpResponseMessage(status), body),
            },
        };
        using var harness = new ResolverHarness(client, options: new KubernetesResolverOptions { InitialBackoff = TimeSpan.FromMilliseconds(20), MaxBackoff = TimeSpan.FromMilliseconds(200) });

        await Poll.UntilAsync(() => harness.Last?.Status.StatusCode == StatusCode.Unavailable, "the error status reported as Unavailable");

        // The server was reached and answered: "could not be reached" sent users to the network.
        var detail = harness.Last!.Status.Detail;
        Assert.True(detail.Contains($"The Kubernetes API server answered {expectedCode} when listing the EndpointSlices of service 'greeter' in namespace 'default'", StringComparison.Ordinal), detail);
        Assert.Contains(expectedHint, detail, StringComparison.Ordinal);
        Assert.Contains("could not find the requested resource", detail, StringComparison.Ordinal); // The API server's own words follow.
        Assert.DoesNotContain("could not be reached", detail, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("kubernetes:///greter.prod:grpc", "'prod'")]
    [InlineData("kubernetes:///greter:grpc", "'default' (the target names none, so the service account's or kubeconfig context's namespace, else 'default', is used)")]
    public async Task List_NoEndpointSliceForTheService_WarnsOnceToCheckTheServiceAndNamespace(string target, string expectedNamespace)
    {
        var client = new ScriptedEndpointSliceClient { OnList = _ => ScriptedEndpointSliceClient.Snapshot("10") };
        var logger = new FakeLogger();
        var time = new FakeTimeProvider();
        using var harness = new ResolverHarness(client, target, time: time, logger: logger);
        await Poll.UntilAsync(() => harness.Last is not null && client.Watches == 1, "the missing endpoints published and watched");
        // Published as a failure that says the same, so failing calls say it too.
        Assert.Equal(StatusCode.Unavailable, harness.Last!.Status.StatusCode);
        Assert.Contains($"Does Service 'greter' exist in namespace {expectedNamespace}?", harness.Last.Status.Detail, StringComparison.Ordinal);

        // A typo in the service or namespace used to show only as "0 endpoints from 0 EndpointSlices" (Information).
        var warning = Assert.Single(logger.Collector.GetSnapshot(), r => r.Level == LogLevel.Warning);
        Assert.True(warning.Message.Contains("no EndpointSlice is labelled kubernetes.io/service-name=greter", StringComparison.Ordinal), warning.Message);
        Assert.Contains($"does Service 'greter' exist in namespace {expectedNamespace}?", warning.Message, StringComparison.Ordinal);

        // Logged once while there are none, not on every relist (a refresh after the watch's liveness window relists).
        time.Advance(TimeSpan.FromMinutes(2) + TimeSpan.FromSeconds(1));
        harness.Resolver.Refresh();
        await Poll.UntilAsync(() => client.Lists >= 2 && client.Watches >= 2, "relisted");
        Assert.Single(logger.Collector.GetSnapshot(), r => r.Level == LogLevel.Warning);
    }

    [Theory]
    [InlineData("kubernetes:///greeter.default:grcp", "no port matching 'grcp'", "Name one of the Service's ports in the target (kubernetes:///greeter.default:<port name>)")]
    [InlineData("kubernetes:///greeter.default", "no port matching (the target names no port)", "A target without a port needs a Service with exactly one TCP port")]
    public async Task Publish_NoSliceHasTheTargetsPort_WarnsWithTheSlicesPortsAndHowToNameOne(string target, string expectedPort, string expectedHint)
    {
        var client = new ScriptedEndpointSliceClient
        {
            OnList = _ => ScriptedEndpointSliceClient.Snapshot("10",
                Slices.Create("a", "greeter", [("10.0.0.1", true)], ("grpc", 8080), ("metrics", 9090))),
        };
        var logger = new FakeLogger();
        using var harness = new ResolverHarness(client, target, logger: logger);

        await Poll.UntilAsync(() => logger.Collector.GetSnapshot().Any(r => r.Level == LogLevel.Warning), "the port mismatch is logged");

        // Not "no port matching (only port)" with nothing to compare against: the ports there are, and what to write.
        var warning = logger.Collector.GetSnapshot().Single(r => r.Level == LogLevel.Warning);
        Assert.True(warning.Message.Contains($"EndpointSlices with {expectedPort}: 1; their endpoints are not used.", StringComparison.Ordinal), warning.Message);
        Assert.Contains("Their TCP ports: grpc (8080), metrics (9090).", warning.Message, StringComparison.Ordinal);
        Assert.Contains(expectedHint, warning.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("(only port)", warning.Message, StringComparison.Ordinal);
    }
}
