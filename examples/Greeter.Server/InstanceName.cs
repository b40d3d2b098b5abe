namespace Greeter.Server;

/// <summary>The name of this server instance, sent in every reply: <c>POD_NAME</c> (Kubernetes downward API) or the host name.</summary>
/// <param name="Value">The name.</param>
internal sealed record InstanceName(string Value)
{
    public static InstanceName FromEnvironment() =>
        new(Environment.GetEnvironmentVariable("POD_NAME") is { Length: > 0 } pod ? pod : Environment.MachineName);
}
