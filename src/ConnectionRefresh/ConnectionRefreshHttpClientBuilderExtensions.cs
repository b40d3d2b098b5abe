using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using ConnectionRefresh;
using ConnectionRefresh.Internal;
using Grpc.Net.ClientFactory;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>
/// Adds connection refresh to an HTTP client, typically the one <c>AddGrpcClient</c> returns:
/// <c>services.AddGrpcClient&lt;Greeter.GreeterClient&gt;(o =&gt; o.Address = new("http://greeter:5000")).AddConnectionRefresh();</c>
/// </summary>
/// <remarks>
/// On a gRPC client, <c>AddConnectionRefresh</c> also takes HttpClientFactory's two default logging handlers out. For
/// gRPC they log every call as an HTTP POST answered with 200, even a failed one (the gRPC status travels in the
/// trailers; grpc-dotnet's own <c>Grpc.Net.Client</c> logs show it), and they cost about 460 B and two async steps per
/// call even when nothing listens. Call <c>AddDefaultLogger()</c> on the builder to keep them; loggers added with
/// <c>AddLogger</c> are kept either way, wherever they stand on the builder.
/// <para>
/// In a host, the handler chain of each client with <c>AddConnectionRefresh</c> is built during start-up validation (before
/// hosted services start), so that a primary handler replaced after <c>AddConnectionRefresh</c> or configured with settings
/// it would drop stops the host; the client then uses that chain. Its <c>DelegatingHandler</c> factories run at that point.
/// Without a host, the same checks fail the client's first creation.
/// </para>
/// </remarks>
public static class ConnectionRefreshHttpClientBuilderExtensions
{
    /// <summary>
    /// Adds connection refresh with the settings of the <c>ConnectionRefresh</c> configuration section, when the
    /// application's <see cref="IConfiguration"/> has one, and the defaults of <see cref="ConnectionRefreshOptions"/> otherwise.
    /// A section that is there but is not an object (a value or a list) fails at start-up; an empty value
    /// (<c>ConnectionRefresh=</c> in the environment, <c>""</c> or <c>[]</c> in JSON) sets nothing, as with Microsoft's binder.
    /// </summary>
    /// <param name="builder">The client's builder.</param>
    /// <returns>The same builder.</returns>
    public static IHttpClientBuilder AddConnectionRefresh(this IHttpClientBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var name = builder.Name;
        builder.Services.AddOptions<ConnectionRefreshOptions>(name).Configure<IServiceProvider>((options, services) =>
        {
            if (services.GetService<IConfiguration>()?.GetSection(ConnectionRefreshDefaults.SectionName) is { } section && section.Exists())
            {
                ConnectionRefreshConfiguration.Bind(options, section, name);
            }
        });
        return AddCore(builder);
    }

    /// <summary>Adds connection refresh with settings made in code, starting from the defaults.</summary>
    /// <param name="builder">The client's builder.</param>
    /// <param name="configure">Sets the options of this client.</param>
    /// <returns>The same builder.</returns>
    public static IHttpClientBuilder AddConnectionRefresh(this IHttpClientBuilder builder, Action<ConnectionRefreshOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(configure);
        builder.Services.Configure(builder.Name, configure);
        return AddCore(builder);
    }

    /// <summary>
    /// Adds connection refresh with the settings of <paramref name="section"/>. A section that does not exist (a
    /// misspelled path) or is not an object (a value or a list), unknown keys and values that do not parse (an empty
    /// setting among them) or are out of range fail at start-up. A section written as an empty object (<c>{}</c>) in the
    /// application's configuration, or with an empty value (<c>""</c>, <c>[]</c>, an empty environment variable), gives the defaults.
    /// </summary>
    /// <param name="builder">The client's builder.</param>
    /// <param name="section">The configuration section, e.g. <c>configuration.GetSection("Clients:Greeter:ConnectionRefresh")</c>.</param>
    /// <returns>The same builder.</returns>
    public static IHttpClientBuilder AddConnectionRefresh(this IHttpClientBuilder builder, IConfigurationSection section)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(section);
        var name = builder.Name;
        builder.Services.AddOptions<ConnectionRefreshOptions>(name).Configure<IServiceProvider>((options, services) =>
        {
            ConnectionRefreshConfiguration.ThrowIfMissing(section, services.GetService<IConfiguration>(), name);
            ConnectionRefreshConfiguration.Bind(options, section, name);
        });
        return AddCore(builder);
    }

    /// <summary>
    /// Configures every <see cref="SocketsHttpHandler"/> that connection refresh creates for this client: TLS
    /// (<see cref="SocketsHttpHandler.SslOptions"/>, client certificates), proxy, credentials, a connect callback.
    /// Runs after the refresh settings, so it may also override them. Use it instead of
    /// <c>ConfigurePrimaryHttpMessageHandler</c>, whose handler connection refresh replaces.
    /// </summary>
    /// <param name="builder">The client's builder.</param>
    /// <param name="configure">Configures a new handler; it may be called many times over the life of the client.</param>
    /// <returns>The same builder.</returns>
    public static IHttpClientBuilder ConfigureConnectionRefreshHandler(this IHttpClientBuilder builder, Action<SocketsHttpHandler, IServiceProvider> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(configure);
        builder.Services.Configure<SocketsHttpHandlerActions>(builder.Name, actions => actions.Actions.Add(configure));
        return builder;
    }

    private static IHttpClientBuilder AddCore(IHttpClientBuilder builder)
    {
        var services = builder.Services;
        var name = builder.Name;
        var registry = (ConnectionRefreshRegistry?)services
            .FirstOrDefault(d => d.ServiceType == typeof(ConnectionRefreshRegistry))?.ImplementationInstance;
        if (registry is null)
        {
            registry = new ConnectionRefreshRegistry();
            services.AddSingleton(registry);
        }

        // A second call only adds configuration: the handler is installed once.
        if (!registry.ClientNames.Add(name))
        {
            return builder;
        }

        services.TryAddSingleton(sp => new ConnectionRefreshMetrics(sp.GetService<IMeterFactory>()));
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<ConnectionRefreshOptions>, ConnectionRefreshOptionsValidator>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<GrpcClientFactoryOptions>, GrpcChannelCompatibilityValidator>());
        services.AddOptions<ConnectionRefreshOptions>(name).ValidateOnStart();
        services.AddOptions<GrpcClientFactoryOptions>(name).ValidateOnStart();

        // Last, after the options: builds the client's handler chain at start-up, so that the primary handler checks below
        // stop the host rather than the client's first creation (where nothing validates on start, they still fail there).
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<HandlerChainCheck>, HandlerChainStartupValidator>());
        services.AddOptions<HandlerChainCheck>(name).ValidateOnStart();

        // AddGrpcClient leaves this marker for every gRPC client (Grpc.Net.ClientFactory checks it the same way).
        var grpc = services.Any(d => d.ServiceType == typeof(IConfigureOptions<GrpcClientFactoryOptions>)
            && d.ImplementationInstance is ConfigureNamedOptions<GrpcClientFactoryOptions> marker && marker.Name == name);
        if (grpc)
        {
            RemoveDefaultHttpLogging(builder);
        }

        // The primary handler is noted where AddConnectionRefresh stands and replaced only after every Configure of
        // this client: a handler replaced later fails, and settings made on it in place later (a
        // ConfigurePrimaryHttpMessageHandler((handler, services) => ...) after us) are seen by the guard.
        var noted = new ConditionalWeakTable<HttpMessageHandlerBuilder, StrongBox<HttpMessageHandler?>>();
        services.Configure<HttpClientFactoryOptions>(name, options => options.HttpMessageHandlerBuilderActions.Add(
            handlerBuilder => noted.AddOrUpdate(handlerBuilder, new(handlerBuilder.PrimaryHandler))));
        services.PostConfigure<HttpClientFactoryOptions>(name, options => options.HttpMessageHandlerBuilderActions.Add(handlerBuilder =>
        {
            var primary = handlerBuilder.PrimaryHandler;
            if (noted.TryGetValue(handlerBuilder, out var before))
            {
                noted.Remove(handlerBuilder);
                PrimaryHandlerGuard.ThrowIfReplaced(before.Value, primary, name);
            }

            PrimaryHandlerGuard.ThrowIfConfigured(primary, name);
            primary?.Dispose();
            handlerBuilder.PrimaryHandler = CreateHandler(handlerBuilder.Services, name, grpc);
        }));
        return builder;
    }

    /// <summary>
    /// Takes HttpClientFactory's default logging handlers out of this gRPC client, as <c>RemoveAllLoggers()</c> does, but
    /// ahead of every other configuration: loggers the application adds with <c>AddLogger</c>, and
    /// <c>AddDefaultLogger()</c>, still apply wherever they stand on the builder.
    /// </summary>
    /// <remarks>
    /// Why: for gRPC they log every call as an HTTP POST that ended with 200, even when the call failed (its status
    /// is in the trailers), and cost two async steps and about 460 B per call even when no logger listens: the whole
    /// difference between <c>AddGrpcClient</c> and a bare channel. grpc-dotnet logs the calls with their gRPC status.
    /// Plain HTTP clients keep them: there the status they log is the answer.
    /// </remarks>
    private static void RemoveDefaultHttpLogging(IHttpClientBuilder builder)
    {
        var scratch = new ServiceCollection();
        new ScratchBuilder(builder.Name, scratch).RemoveAllLoggers();
        builder.Services.Insert(0, scratch.Single(d => d.ServiceType == typeof(IConfigureOptions<HttpClientFactoryOptions>)));
    }

    private static ConnectionRefreshHandler CreateHandler(IServiceProvider services, string name, bool grpc)
    {
        var options = services.GetRequiredService<IOptionsMonitor<ConnectionRefreshOptions>>().Get(name);
        var configure = services.GetRequiredService<IOptionsMonitor<SocketsHttpHandlerActions>>().Get(name).Actions;
        var logger = services.GetService<ILoggerFactory>()?.CreateLogger(ConnectionRefreshMetrics.MeterName) ?? NullLogger.Instance;
        var telemetry = new ConnectionRefreshTelemetry(name, services.GetRequiredService<ConnectionRefreshMetrics>(), logger);
        var sockets = new SocketsHttpHandlerFactory(options, configure.ToArray(), services, telemetry, grpc);
        var generations = new GenerationFactory(options, sockets.Create, services.GetService<TimeProvider>() ?? TimeProvider.System, telemetry);
        return new ConnectionRefreshHandler(generations, options.ConnectionsPerEndpoint);
    }

    /// <summary>Records what an <see cref="IHttpClientBuilder"/> extension registers, to place it elsewhere.</summary>
    private sealed class ScratchBuilder(string name, IServiceCollection services) : IHttpClientBuilder
    {
        public string Name { get; } = name;

        public IServiceCollection Services { get; } = services;
    }
}
