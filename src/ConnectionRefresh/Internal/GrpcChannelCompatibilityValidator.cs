using Grpc.Net.Client;
using Grpc.Net.ClientFactory;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Internal;

/// <summary>
/// Fails at start-up for gRPC client settings that cannot work with ConnectionRefresh: grpc-dotnet's own
/// client-side balancing (a <c>dns:///</c> address, a load-balancing service config) needs the primary handler
/// to be a bare SocketsHttpHandler, and a ConfigureChannel that replaces the HttpHandler or sets an HttpClient bypasses ours.
/// </summary>
/// <remarks>
/// The ConfigureChannel actions run here on options filled as Grpc.Net.ClientFactory fills them before it runs them
/// (GrpcCallInvokerFactory: HttpHandler, LoggerFactory, ServiceProvider), so that actions which use those properties
/// work here as they do there. The HttpHandler is a placeholder for the client's handler chain: an action may wrap it
/// (a DelegatingHandler around it keeps ours on the call path), but not replace it.
/// </remarks>
internal sealed class GrpcChannelCompatibilityValidator : IValidateOptions<GrpcClientFactoryOptions>
{
    private readonly ConnectionRefreshRegistry _registry;
    private readonly IServiceScopeFactory _scopes;
    private readonly ILoggerFactory _loggerFactory;

    public GrpcChannelCompatibilityValidator(ConnectionRefreshRegistry registry, IServiceScopeFactory scopes, ILoggerFactory loggerFactory)
    {
        _registry = registry;
        _scopes = scopes;
        _loggerFactory = loggerFactory;
    }

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

        var placeholder = new ClientHandlerPlaceholder();
        var channel = new GrpcChannelOptions { HttpHandler = placeholder, LoggerFactory = _loggerFactory };
        using (var scope = _scopes.CreateScope())
        {
            // Grpc.Net.ClientFactory gives the channel a scope of its own, kept as long as the channel.
            channel.ServiceProvider = scope.ServiceProvider;
            foreach (var configure in options.ChannelOptionsActions)
            {
                configure(channel);
            }
        }

        var keepsOurs = Wraps(channel.HttpHandler, placeholder);
        if (!keepsOurs || channel.HttpClient is not null)
        {
            // A wrapper around the placeholder is not disposed: the action may reuse that instance for the real channel.
            if (!keepsOurs)
            {
                channel.HttpHandler?.Dispose();
            }

            return ValidateOptionsResult.Fail(
                $"gRPC client '{name}' {(keepsOurs ? "sets GrpcChannelOptions.HttpClient" : "replaces GrpcChannelOptions.HttpHandler")} in ConfigureChannel, " +
                "which bypasses AddConnectionRefresh. Remove it (a DelegatingHandler around the HttpHandler it is given is fine), " +
                "and configure the connection with ConfigureConnectionRefreshHandler.");
        }

        if (channel.ServiceConfig?.LoadBalancingConfigs.Count > 0)
        {
            return ValidateOptionsResult.Fail(
                $"gRPC client '{name}' configures a load-balancing policy ({channel.ServiceConfig.LoadBalancingConfigs[0].PolicyName}) in its service config. " +
                "grpc-dotnet's balancer cannot run under AddConnectionRefresh, whose connection slots do the balancing; remove one of the two.");
        }

        return ValidateOptionsResult.Success;
    }

    /// <summary>True if <paramref name="handler"/> is the placeholder or DelegatingHandlers around it, as grpc-dotnet walks a chain.</summary>
    private static bool Wraps(HttpMessageHandler? handler, ClientHandlerPlaceholder placeholder)
    {
        while (handler is DelegatingHandler { InnerHandler: { } inner })
        {
            handler = inner;
        }

        return handler == placeholder;
    }

    /// <summary>Stands in for the client's handler chain while the actions run; never sends.</summary>
    private sealed class ClientHandlerPlaceholder : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
            => throw new InvalidOperationException("ConnectionRefresh's placeholder for the client's handler only serves start-up validation.");
    }
}
