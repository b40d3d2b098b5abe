using ConnectionRefresh.Kubernetes;
using ConnectionRefresh.Kubernetes.Internal;
using ConnectionRefresh.Shared;
using Grpc.Net.Client.Balancer;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using System.Diagnostics.Metrics;
using System.Reflection;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>
/// Registers the <c>kubernetes:///service.namespace:port</c> resolver for grpc-dotnet channels, which
/// watches the Service's EndpointSlices. Channels created by <c>AddGrpcClient</c> find it through their
/// service provider; use it with a <c>round_robin</c> service config to balance every call across pods.
/// </summary>
public static class KubernetesResolverServiceCollectionExtensions
{
    // The settings by key, as the binder matches them (case-insensitively), to convert each value before binding.
    private static readonly Dictionary<string, PropertyInfo> Settings = typeof(KubernetesResolverOptions)
        .GetProperties(BindingFlags.Public | BindingFlags.Instance)
        .ToDictionary(p => p.Name, StringComparer.OrdinalIgnoreCase);

    /// <summary>
    /// Registers the Kubernetes resolver with options bound from the configuration section
    /// <c>ConnectionRefresh:Kubernetes</c> (when an <see cref="IConfiguration"/> is registered), validated at start-up.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <returns>The same service collection.</returns>
    public static IServiceCollection AddKubernetesResolver(this IServiceCollection services)
    {
        ArgumentNullException.ThrowIfNull(services);
        services.AddSingleton<IConfigureOptions<KubernetesResolverOptions>>(sp => new ConfigureNamedOptions<KubernetesResolverOptions>(
            Options.Options.DefaultName,
            options => Bind(sp.GetService<IConfiguration>()?.GetSection(KubernetesResolverDefaults.ConfigurationSection), options)));
        return AddCore(services);
    }

    /// <summary>
    /// Registers the Kubernetes resolver with options bound from <c>ConnectionRefresh:Kubernetes</c> (when an
    /// <see cref="IConfiguration"/> is registered) and then changed by <paramref name="configure"/>; validated at start-up.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="configure">Changes the options.</param>
    /// <returns>The same service collection.</returns>
    public static IServiceCollection AddKubernetesResolver(this IServiceCollection services, Action<KubernetesResolverOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        AddKubernetesResolver(services);
        services.Configure(configure);
        return services;
    }

    /// <summary>
    /// Registers the Kubernetes resolver with options bound from <paramref name="section"/>, which must exist (write it as
    /// <c>{}</c> for the defaults): a missing section, unknown keys and bad values stop the host at start-up.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="section">The configuration section, for example <c>configuration.GetSection("ConnectionRefresh:Kubernetes")</c>.</param>
    /// <returns>The same service collection.</returns>
    public static IServiceCollection AddKubernetesResolver(this IServiceCollection services, IConfigurationSection section)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(section);
        services.AddSingleton<IConfigureOptions<KubernetesResolverOptions>>(sp => new ConfigureNamedOptions<KubernetesResolverOptions>(
            Options.Options.DefaultName,
            options =>
            {
                ThrowIfMissing(section, sp.GetService<IConfiguration>());
                Bind(section, options);
            }));
        return AddCore(services);
    }

    private static IServiceCollection AddCore(IServiceCollection services)
    {
        services.AddOptions<KubernetesResolverOptions>().ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<KubernetesResolverOptions>, KubernetesResolverOptionsValidator>());
        services.TryAddSingleton(sp => new KubernetesResolverMetrics(sp.GetService<IMeterFactory>() ?? sp.GetRequiredService<FallbackMeterFactory>()));
        services.TryAddSingleton<FallbackMeterFactory>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<ResolverFactory, KubernetesResolverFactory>());
        return services;
    }

    // A section given by path must exist: a misspelled path would bind nothing and run with the defaults in silence.
    private static void ThrowIfMissing(IConfigurationSection section, IConfiguration? application)
    {
        if (!ConfigurationSections.IsGiven(section, application))
        {
            throw new OptionsValidationException(Options.Options.DefaultName, typeof(KubernetesResolverOptions),
                [$"The configuration section '{section.Path}' does not exist, so none of its settings would apply. "
                 + ConfigurationSections.WhereThePathStops(application, section.Path)
                 + " Check the path (':' separates levels). To run with the defaults, call AddKubernetesResolver() without a section "
                 + $"(it reads the optional '{KubernetesResolverDefaults.ConfigurationSection}' section), or write the section as {{}} "
                 + "in the application's configuration."]);
        }
    }

    private static void Bind(IConfigurationSection? section, KubernetesResolverOptions options)
    {
        if (section is null)
        {
            return;
        }

        // A value where the section belongs ("ConnectionRefresh__Kubernetes=true") binds nothing: it would run with the
        // defaults in silence. An empty value sets nothing, as the binder reads it (and as the client package does).
        if (!string.IsNullOrEmpty(section.Value))
        {
            throw new OptionsValidationException(Options.Options.DefaultName, typeof(KubernetesResolverOptions),
                [$"The configuration section '{section.Path}' must be an object of settings, e.g. {{ \"IncludeTerminatingEndpoints\": true }}; "
                 + $"found the value '{section.Value}'. Its keys are {string.Join(", ", Settings.Values.Select(p => p.Name))}; to run with the defaults, "
                 + "write it as {} or remove it."]);
        }

        // Named here, with the full key and the keys there are, rather than by the binder ("'ErrorOnUnknownConfiguration' was set
        // on the provided BinderOptions, but the following properties were not found ..."), as ConnectionRefresh.Server does.
        var unknown = section.GetChildren().Where(entry => !Settings.ContainsKey(entry.Key)).Select(entry => $"'{entry.Path}'").ToList();
        if (unknown.Count > 0)
        {
            throw new OptionsValidationException(Options.Options.DefaultName, typeof(KubernetesResolverOptions),
                [$"Unknown configuration key(s) {string.Join(", ", unknown)}; the keys of {section.Path} are {string.Join(", ", Settings.Values.Select(p => p.Name))}."]);
        }

        foreach (var entry in section.GetChildren())
        {
            ThrowIfUnparsable(entry);
        }

        try
        {
            section.Bind(options, binder => binder.ErrorOnUnknownConfiguration = true);
        }
        catch (InvalidOperationException ex)
        {
            throw new OptionsValidationException(Options.Options.DefaultName, typeof(KubernetesResolverOptions),
                [$"{section.Path}: {ex.Message}"]);
        }

        options.ConfigurationSectionPath = section.Path;
        foreach (var entry in section.GetChildren())
        {
            if (Settings.TryGetValue(entry.Key, out var property))
            {
                options.Origins.Bound(property.Name, entry.Path, property.GetValue(options));
            }
        }
    }

    /// <summary>
    /// Converts one value as the binder will, so that a value that does not parse fails with its key, the value as written
    /// and the allowed range (the binder's own message names only the type). Unknown keys are left to the binder.
    /// </summary>
    private static void ThrowIfUnparsable(IConfigurationSection entry)
    {
        if (entry.Value is null || !Settings.TryGetValue(entry.Key, out var property))
        {
            return;
        }

        var type = property.PropertyType;
        try
        {
            // An empty value would leave a value type at its default in silence; a reference type (a URI, a path) is unset.
            if (entry.Get(type) is null && type.IsValueType)
            {
                throw new FormatException("the value is empty");
            }
        }
        catch (Exception ex) when (ex is InvalidOperationException or FormatException)
        {
            var format = type == typeof(TimeSpan) ? ", written as [d.]hh:mm:ss[.fffffff] (e.g. 00:05:00 for 5 minutes)" : "";
            throw new OptionsValidationException(Options.Options.DefaultName, typeof(KubernetesResolverOptions),
                [$"{entry.Path} is '{entry.Value}', which is not a valid {type.Name}; allowed: {KubernetesResolverOptionsValidator.AllowedRange(property.Name)}{format}."]);
        }
    }
}
