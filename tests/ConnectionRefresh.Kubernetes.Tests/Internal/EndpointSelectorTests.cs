using ConnectionRefresh.Kubernetes.Internal;
using ConnectionRefresh.Kubernetes.Tests.Fakes;
using k8s.Models;

namespace ConnectionRefresh.Kubernetes.Tests.Internal;

public sealed class EndpointSelectorTests
{
    private static readonly KubernetesTarget Named = new("greeter", "default", null, "grpc");

    [Fact]
    public void Select_ReadyNotReadyAndTerminating_UsesReadyOnlyByDefault()
    {
        var slice = WithConditions(("10.0.0.1", true, true, false), ("10.0.0.2", false, false, false), ("10.0.0.3", false, true, true));

        var endpoints = new EndpointSelector(Named, includeTerminating: false).Select([slice], out _);

        Assert.Equal([new ResolvedEndpoint("10.0.0.1", 8080)], endpoints);
    }

    [Fact]
    public void Select_IncludeTerminatingWhileAnEndpointIsReady_UsesReadyOnly()
    {
        // kube-proxy's rule: a serving terminating endpoint gets no new traffic while a ready one exists (in any slice).
        var terminating = WithConditions(("10.0.0.2", false, false, true), ("10.0.0.3", false, true, true));
        var ready = WithConditions(("10.0.0.1", true, true, false));
        ready.Metadata.Name = "b";

        var endpoints = new EndpointSelector(Named, includeTerminating: true).Select([terminating, ready], out _);

        Assert.Equal([new ResolvedEndpoint("10.0.0.1", 8080)], endpoints);
    }

    [Fact]
    public void Select_IncludeTerminatingAndNoEndpointReady_UsesServingTerminatingOnes()
    {
        var slice = WithConditions(("10.0.0.1", false, false, false), ("10.0.0.2", false, false, true), ("10.0.0.3", false, true, true));
        var unknownServing = WithConditions(("10.0.0.4", false, true, true));
        unknownServing.Metadata.Name = "b";
        unknownServing.Endpoints[0].Conditions.Serving = null; // The API: a missing serving condition means serving.

        Assert.Equal([new ResolvedEndpoint("10.0.0.3", 8080), new ResolvedEndpoint("10.0.0.4", 8080)],
            new EndpointSelector(Named, includeTerminating: true).Select([slice, unknownServing], out _));
        Assert.Empty(new EndpointSelector(Named, includeTerminating: false).Select([slice, unknownServing], out _));
    }

    [Fact]
    public void Select_NullReadyCondition_CountsAsReady()
    {
        var slice = Slices.Ready("a", "greeter", ["10.0.0.1"], 8080);
        slice.Endpoints[0].Conditions = null;

        Assert.Single(new EndpointSelector(Named, false).Select([slice], out _));
    }

    [Fact]
    public void Select_SameEndpointInTwoSlices_DeDuplicated()
    {
        var endpoints = new EndpointSelector(Named, false).Select(
            [Slices.Ready("a", "greeter", ["10.0.0.1", "10.0.0.2"], 8080), Slices.Ready("b", "greeter", ["10.0.0.2"], 8080)], out _);

        Assert.Equal(2, endpoints.Count);
    }

    [Fact]
    public void Select_NoPortAndSeveralPorts_SkipsAmbiguousSlice()
    {
        var target = new KubernetesTarget("greeter", "default", null, null);
        var single = Slices.Create("a", "greeter", [("10.0.0.1", true)], ("grpc", 8080));
        var several = Slices.Create("b", "greeter", [("10.0.0.2", true)], ("grpc", 8080), ("metrics", 9090));

        var endpoints = new EndpointSelector(target, false).Select([single, several], out var skipped);

        Assert.Equal([new ResolvedEndpoint("10.0.0.1", 8080)], endpoints);
        Assert.Equal(1, skipped);
    }

    [Fact]
    public void Select_PortNumber_UsedForEveryEndpoint()
    {
        var target = new KubernetesTarget("greeter", "default", 5000, null);

        var endpoints = new EndpointSelector(target, false).Select([Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)], out _);

        Assert.Equal([new ResolvedEndpoint("10.0.0.1", 5000)], endpoints);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Select_DualStackSlices_OneIPv4EndpointPerPod(bool withUid)
    {
        var v4 = Slices.Family("a-v4", "greeter", "IPv4", 8080, ("10.0.0.1", "greeter-1"), ("10.0.0.2", "greeter-2"));
        var v6 = Slices.Family("a-v6", "greeter", "IPv6", 8080, ("fd00::1", "greeter-1"), ("fd00::2", "greeter-2"));
        if (!withUid)
        {
            // Without a uid the pod is matched by kind, namespace and name.
            foreach (var endpoint in v4.Endpoints.Concat(v6.Endpoints))
            {
                endpoint.TargetRef.Uid = null;
            }
        }

        var endpoints = new EndpointSelector(Named, false).Select([v6, v4], out _);

        Assert.Equal(["10.0.0.1:8080", "10.0.0.2:8080"], endpoints.Select(e => e.ToString()));
    }

    [Fact]
    public void Select_PodMissingOrNotReadyInIPv4Slice_UsesItsIPv6Endpoint()
    {
        // The two slices are updated independently: a pod can be in the IPv6 slice before the IPv4 one (greeter-2),
        // or ready in one and not yet in the other (greeter-3). It keeps a usable address either way.
        var v4 = Slices.Family("a-v4", "greeter", "IPv4", 8080, ("10.0.0.1", "greeter-1"), ("10.0.0.3", "greeter-3"));
        v4.Endpoints[1].Conditions.Ready = false;
        var v6 = Slices.Family("a-v6", "greeter", "IPv6", 8080, ("fd00::1", "greeter-1"), ("fd00::2", "greeter-2"), ("fd00::3", "greeter-3"));

        var endpoints = new EndpointSelector(Named, false).Select([v4, v6], out _);

        Assert.Equal(["10.0.0.1:8080", "[fd00::2]:8080", "[fd00::3]:8080"], endpoints.Select(e => e.ToString()));
    }

    [Fact]
    public void Select_DualStackAndNoEndpointReady_OneServingTerminatingEndpointPerPod()
    {
        var v4 = Slices.Family("a-v4", "greeter", "IPv4", 8080, ("10.0.0.1", "greeter-1"));
        var v6 = Slices.Family("a-v6", "greeter", "IPv6", 8080, ("fd00::1", "greeter-1"), ("fd00::2", "greeter-2"));
        foreach (var endpoint in v4.Endpoints.Concat(v6.Endpoints))
        {
            endpoint.Conditions = new V1EndpointConditions { Ready = false, Serving = true, Terminating = true };
        }

        var endpoints = new EndpointSelector(Named, includeTerminating: true).Select([v4, v6], out _);

        Assert.Equal(["10.0.0.1:8080", "[fd00::2]:8080"], endpoints.Select(e => e.ToString()));
    }

    [Fact]
    public void Select_DualStackWithoutTargetRef_PublishesEveryAddress()
    {
        // Nothing says which addresses belong to the same backend, so none is dropped.
        var v4 = Slices.Family("a-v4", "greeter", "IPv4", 8080, ("10.0.0.1", "greeter-1"));
        var v6 = Slices.Family("a-v6", "greeter", "IPv6", 8080, ("fd00::1", "greeter-1"));
        v4.Endpoints[0].TargetRef = null;
        v6.Endpoints[0].TargetRef = null;

        var endpoints = new EndpointSelector(Named, false).Select([v4, v6], out _);

        Assert.Equal(["10.0.0.1:8080", "[fd00::1]:8080"], endpoints.Select(e => e.ToString()));
    }

    [Fact]
    public void Select_FqdnSlice_Ignored()
    {
        // The API defines no semantics for FQDN slices; the EndpointSlice controller never writes them, kube-proxy skips them.
        var fqdn = Slices.Ready("a-fqdn", "greeter", ["greeter-1.example.com"], 8080);
        fqdn.AddressType = "FQDN";

        var endpoints = new EndpointSelector(Named, false).Select([fqdn, Slices.Ready("a-v4", "greeter", ["10.0.0.1"], 8080)], out var skipped);

        Assert.Equal([new ResolvedEndpoint("10.0.0.1", 8080)], endpoints);
        Assert.Equal(0, skipped);
    }

    private static V1EndpointSlice WithConditions(params (string Ip, bool Ready, bool Serving, bool Terminating)[] endpoints)
    {
        var slice = Slices.Ready("a", "greeter", endpoints.Select(e => e.Ip), 8080);
        for (var i = 0; i < endpoints.Length; i++)
        {
            slice.Endpoints[i].Conditions = new V1EndpointConditions { Ready = endpoints[i].Ready, Serving = endpoints[i].Serving, Terminating = endpoints[i].Terminating };
        }

        return slice;
    }
}
