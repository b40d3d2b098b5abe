using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Http;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Internal;

/// <summary>
/// Options of nothing: validated on start under each client name that has AddConnectionRefresh, so that
/// <see cref="HandlerChainStartupValidator"/> runs at start-up for each of them.
/// </summary>
internal sealed class HandlerChainCheck;

/// <summary>
/// Builds the handler chain of each client that has AddConnectionRefresh at host start-up, so that the checks made while it
/// is built (<see cref="PrimaryHandlerGuard"/>: a primary handler replaced after AddConnectionRefresh, or configured with
/// settings ours would drop) stop the host instead of failing the client's first creation.
/// </summary>
/// <remarks>
/// <para>
/// The chain is built with <see cref="IHttpMessageHandlerFactory.CreateHandler"/>, as IHttpClientFactory and
/// Grpc.Net.ClientFactory (GrpcCallInvokerFactory) build it: HttpClientFactory keeps it as the client's active handler for
/// <c>HandlerLifetime</c> (2 minutes by default) from now, so a client created within that time, a gRPC client's channel
/// included, uses this very chain; a client first created later gets a new one, and this one, which never opened a
/// connection (ConnectionRefresh opens them at the first call), is disposed by the factory.
/// </para>
/// <para>
/// A mistake found by the guard is reported as a validation failure, with the message the client's creation would throw, so
/// it comes together with the other start-up errors. Any other failure of the chain (a DelegatingHandler factory that throws)
/// is passed on as it is and stops the host too: HttpClientFactory keeps a failed creation for good, so the client would
/// never have worked. Options of this client that fail validation are skipped here: their own ValidateOnStart reports them.
/// Stateless apart from the services it was given, so thread-safe.
/// </para>
/// </remarks>
internal sealed class HandlerChainStartupValidator : IValidateOptions<HandlerChainCheck>
{
    private readonly ConnectionRefreshRegistry _registry;
    private readonly IServiceProvider _services;
    private readonly IOptionsMonitor<ConnectionRefreshOptions> _options;

    public HandlerChainStartupValidator(ConnectionRefreshRegistry registry, IServiceProvider services, IOptionsMonitor<ConnectionRefreshOptions> options)
    {
        _registry = registry;
        _services = services;
        _options = options;
    }

    public ValidateOptionsResult Validate(string? name, HandlerChainCheck options)
    {
        if (name is null || !_registry.ClientNames.Contains(name) || _services.GetService<IHttpMessageHandlerFactory>() is not { } factory)
        {
            return ValidateOptionsResult.Skip;
        }

        try
        {
            _ = _options.Get(name);
        }
        catch (OptionsValidationException)
        {
            // Reported by the ValidateOnStart of ConnectionRefreshOptions; the chain would only fail with it once more.
            return ValidateOptionsResult.Skip;
        }

        try
        {
            _ = factory.CreateHandler(name);
        }
        catch (PrimaryHandlerException exception)
        {
            return ValidateOptionsResult.Fail(exception.Message);
        }

        return ValidateOptionsResult.Success;
    }
}
