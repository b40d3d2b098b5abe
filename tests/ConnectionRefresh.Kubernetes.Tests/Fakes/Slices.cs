using k8s.Models;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>Builds EndpointSlices as the EndpointSlice controller writes them.</summary>
internal static class Slices
{
    public static V1EndpointSlice Create(string name, string service, IEnumerable<(string Ip, bool Ready)> endpoints, params (string? Name, int Port)[] ports) => new()
    {
        ApiVersion = "discovery.k8s.io/v1",
        Kind = "EndpointSlice",
        Metadata = new V1ObjectMeta
        {
            Name = name,
            Labels = new Dictionary<string, string> { ["kubernetes.io/service-name"] = service, ["endpointslice.kubernetes.io/managed-by"] = "endpointslice-controller.k8s.io" },
        },
        AddressType = "IPv4",
        Ports = ports.Select(p => new Discoveryv1EndpointPort { Name = p.Name, Port = p.Port, Protocol = "TCP" }).ToList(),
        Endpoints = endpoints.Select(e => new V1Endpoint
        {
            Addresses = [e.Ip],
            Conditions = new V1EndpointConditions { Ready = e.Ready, Serving = e.Ready, Terminating = false },
            TargetRef = new V1ObjectReference { Kind = "Pod", Name = "pod-" + e.Ip.Replace('.', '-') },
        }).ToList(),
    };

    public static V1EndpointSlice Ready(string name, string service, IEnumerable<string> ips, int port, string portName = "grpc") =>
        Create(name, service, ips.Select(ip => (ip, true)), (portName, port));

    /// <summary>
    /// One address family's slice of a dual-stack Service: the controller writes one slice per family, each listing every
    /// pod with the same <c>targetRef</c> (kind, namespace, name, uid).
    /// </summary>
    public static V1EndpointSlice Family(string name, string service, string addressType, int port, params (string Ip, string Pod)[] endpoints)
    {
        var slice = Ready(name, service, endpoints.Select(e => e.Ip), port);
        slice.AddressType = addressType;
        for (var i = 0; i < endpoints.Length; i++)
        {
            slice.Endpoints[i].TargetRef = new V1ObjectReference { Kind = "Pod", NamespaceProperty = "default", Name = endpoints[i].Pod, Uid = "uid-" + endpoints[i].Pod };
        }

        return slice;
    }
}
