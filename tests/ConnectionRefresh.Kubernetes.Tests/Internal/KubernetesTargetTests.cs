using ConnectionRefresh.Kubernetes.Internal;

namespace ConnectionRefresh.Kubernetes.Tests.Internal;

public sealed class KubernetesTargetTests
{
    [Theory]
    [InlineData("kubernetes:///greeter.default:grpc", "greeter", "default", null, "grpc")]
    [InlineData("kubernetes:///greeter.prod:8080", "greeter", "prod", 8080, null)]
    [InlineData("kubernetes:///greeter:grpc", "greeter", null, null, "grpc")]
    [InlineData("kubernetes:///greeter", "greeter", null, null, null)]
    [InlineData("kubernetes://prod/greeter:8080", "greeter", "prod", 8080, null)]
    [InlineData("kubernetes:///greeter.prod.svc.cluster.local:grpc", "greeter", "prod", null, "grpc")]
    public void Parse_ValidTarget_ReturnsParts(string address, string service, string? ns, int? port, string? portName)
    {
        var target = KubernetesTarget.Parse(new Uri(address));

        Assert.Equal(new KubernetesTarget(service, ns, port, portName), target);
    }

    [Theory]
    [InlineData("grpc-internal-api")]
    [InlineData("a23456789-123456789-123456789-123456789-123456789-123456789-123")]
    public void Parse_ServicePortNameLongerThan15Characters_Accepted(string portName)
    {
        // Service port names are DNS labels (up to 63 characters), and EndpointSlices carry the Service port's name; the
        // 15-character limit is that of container port names.
        var target = KubernetesTarget.Parse(new Uri($"kubernetes:///greeter.default:{portName}"));

        Assert.Equal(portName, target.PortName);
    }

    [Theory]
    [InlineData("dns:///greeter.default:80", "scheme")]
    [InlineData("kubernetes:///greeter.default:a23456789-123456789-123456789-123456789-123456789-123456789-1234", "port name")]
    [InlineData("kubernetes:///greeter.default:-grpc", "port name")]
    [InlineData("kubernetes:///greeter.default:70000", "the port is 70000; allowed: 1 to 65535.")]
    [InlineData("kubernetes:///greeter.default:Not_A_Port", "port name")]
    [InlineData("kubernetes:///Greeter_1.default:80", "DNS label")]
    [InlineData("kubernetes://prod/greeter.default:80", "twice")]
    [InlineData("kubernetes:///greeter.default.example.com:80", "service.namespace")]
    [InlineData("kubernetes:///", "expected")]
    public void Parse_InvalidTarget_ThrowsNamingTheProblem(string address, string expected)
    {
        var ex = Assert.Throws<FormatException>(() => KubernetesTarget.Parse(new Uri(address)));

        Assert.Contains(expected, ex.Message, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("is not a valid Kubernetes target", ex.Message, StringComparison.Ordinal);
    }
}
