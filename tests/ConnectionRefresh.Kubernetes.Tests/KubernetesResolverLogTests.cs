using ConnectionRefresh.Kubernetes.Tests.Fakes;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;

namespace ConnectionRefresh.Kubernetes.Tests;

/// <summary>What the resolver's logs tell a user to fix; the API is an in-memory script.</summary>
public sealed class KubernetesResolverLogTests
{
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
        Assert.True(warning.Message.Contains($"1 EndpointSlices have {expectedPort}; their endpoints are not used.", StringComparison.Ordinal), warning.Message);
        Assert.Contains("Their TCP ports: grpc (8080), metrics (9090).", warning.Message, StringComparison.Ordinal);
        Assert.Contains(expectedHint, warning.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("(only port)", warning.Message, StringComparison.Ordinal);
    }
}
