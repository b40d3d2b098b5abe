using Grpc.Net.Client;
using Grpc.Net.ClientFactory;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Internal;

/// <summary>
/// Fails at start-up for gRPC client settings that cannot work with ConnectionRefresh: grpc-dotnet's own
/// client-side balancing (a <c>dns:///</c> address, a load-balancing service config) needs the primary handler
/// to be a bare SocketsHttpHandler, and a ConfigureChannel that sets its own HttpHandler or HttpClient bypasses ours.
/// </summary>
internal sealed class GrpcChannelCompatibilityValidator : IValidateOptions<GrpcClientFactoryOptions>
{
    private readonly ConnectionRefreshRegistry _registry;

    public GrpcChannelCompatibilityValidator(ConnectionRefreshRegistry registry) => _registry = registry;

    public ValidateOptionsResult Validate(string? name, GrpcClientFactoryOptions options)
    {
        if (name is null || !_registry.ClientNames.Contains(name))
        {
            return ValidateOptionsResult.Skip;
        }

        if (options.Address is { } address && address.Scheme != Uri.UriSchemeHttp && address.Scheme != Uri.UriSchemeHttps)
        {
            return ValidateOptionsResult.Fail(
                $"gRPC client '{name}' has the address '{address}'. AddConnectionRefresh needs an http:// or https:// address " +
                "(a ClusterIP Service, e.g. http://greeter:5000): other schemes use grpc-dotnet's client-side balancer, which ConnectionRefresh replaces. " +
                "For per-call balancing over pod addresses use ConnectionRefresh.Kubernetes without AddConnectionRefresh.");
        }

        var channel = new GrpcChannelOptions();
        foreach (var configure in options.ChannelOptionsActions)
        {
            configure(channel);
        }

        using (channel.HttpHandler)
        {
            if (channel.HttpHandler is not null || channel.HttpClient is not null)
            {
                return ValidateOptionsResult.Fail(
                    $"gRPC client '{name}' sets GrpcChannelOptions.{(channel.HttpHandler is not null ? "HttpHandler" : "HttpClient")} in ConfigureChannel, " +
                    "which bypasses AddConnectionRefresh. Remove it, and configure the connection with ConfigureConnectionRefreshHandler.");
            }
        }

        if (channel.ServiceConfig?.LoadBalancingConfigs.Count > 0)
        {
            return ValidateOptionsResult.Fail(
                $"gRPC client '{name}' configures a load-balancing policy ({channel.ServiceConfig.LoadBalancingConfigs[0].PolicyName}) in its service config. " +
                "grpc-dotnet's balancer cannot run under AddConnectionRefresh, whose connection slots do the balancing; remove one of the two.");
        }

        return ValidateOptionsResult.Success;
    }
}
