using ConnectionRefresh.Server;
using ConnectionRefresh.Server.Internal;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>
/// Registers the server-side connection age: its options (validated at start-up), its metrics, and the middleware
/// that counts the calls of each connection (needed for <see cref="ServerConnectionAgeOptions.MaxConnectionIdle"/>).
/// The endpoints that use it are chosen with <c>UseServerConnectionAge()</c> on Kestrel's options; when
/// <c>kestrel.UseServerConnectionAge()</c> reached no endpoint (its endpoint defaults were replaced, or came after every
/// endpoint), the host fails to start.
/// </summary>
/// <example>
/// <code>
/// builder.Services.AddServerConnectionAge();   // binds "ConnectionRefresh:Server"
/// builder.WebHost.ConfigureKestrel(kestrel => kestrel.UseServerConnectionAge());
/// </code>
/// </example>
public static class ServerConnectionAgeServiceCollectionExtensions
{
    /// <summary>
    /// Registers the server-side connection age with options bound from the <c>ConnectionRefresh:Server</c> section:
    /// defaults when it is absent; a section that is not an object (a value, <c>""</c> or a list) fails at start-up.
    /// </summary>
    /// <param name="services">The services.</param>
    /// <returns><paramref name="services"/>.</returns>
    public static IServiceCollection AddServerConnectionAge(this IServiceCollection services)
    {
        ArgumentNullException.ThrowIfNull(services);
        AddCore(services)
            .Configure<IConfiguration>((options, configuration) =>
                ServerConnectionAgeOptionsLoader.Bind(configuration.GetSection(ServerConnectionAgeDefaults.SectionName), options));
        return services;
    }

    /// <summary>Registers the server-side connection age with options set in code.</summary>
    /// <param name="services">The services.</param>
    /// <param name="configure">Changes the default options.</param>
    /// <returns><paramref name="services"/>.</returns>
    public static IServiceCollection AddServerConnectionAge(this IServiceCollection services, Action<ServerConnectionAgeOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        AddCore(services).Configure(configure);
        return services;
    }

    /// <summary>Registers the server-side connection age with options bound from a configuration section.</summary>
    /// <param name="services">The services.</param>
    /// <param name="section">
    /// The section, for example <c>configuration.GetSection("ConnectionRefresh:Server")</c>. It must exist (a misspelled
    /// path fails at start-up, naming what is there) and be an object of settings; unknown keys are rejected. A section
    /// written as <c>{}</c> in the application's configuration (the <c>IConfiguration</c> in its services) gives the defaults.
    /// </param>
    /// <returns><paramref name="services"/>.</returns>
    public static IServiceCollection AddServerConnectionAge(this IServiceCollection services, IConfigurationSection section)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(section);
        AddCore(services).Configure<IServiceProvider>((options, provider) =>
        {
            ServerConnectionAgeOptionsLoader.ThrowIfMissing(section, provider);
            ServerConnectionAgeOptionsLoader.Bind(section, options);
        });
        return services;
    }

    private static OptionsBuilder<ServerConnectionAgeOptions> AddCore(IServiceCollection services)
    {
        services.AddMetrics();
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton<ServerConnectionAgeRegistration>();
        services.TryAddSingleton(sp => new ServerConnectionAgeMetrics(sp.GetService<System.Diagnostics.Metrics.IMeterFactory>()));
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IStartupFilter, ConnectionCallCountingStartupFilter>());
        // One instance: kestrel.UseServerConnectionAge() and the endpoints record in it, the host runs its check.
        services.TryAddSingleton<KestrelEndpointDefaultsCheck>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, KestrelEndpointDefaultsCheck>(
            provider => provider.GetRequiredService<KestrelEndpointDefaultsCheck>()));
        // Runs only when Kestrel is the server (it configures its options; TestServer does not): the check then knows
        // that an endpoint without the age means the registration has no effect.
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IConfigureOptions<KestrelServerOptions>, KestrelInUse>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<ServerConnectionAgeOptions>, ServerConnectionAgeOptionsValidator>());
        return services.AddOptions<ServerConnectionAgeOptions>().ValidateOnStart();
    }

    /// <summary>Tells <see cref="KestrelEndpointDefaultsCheck"/> that Kestrel's options are being configured.</summary>
    private sealed class KestrelInUse(KestrelEndpointDefaultsCheck check) : IConfigureOptions<KestrelServerOptions>
    {
        public void Configure(KestrelServerOptions options) => check.KestrelConfigured();
    }
}
