using ConnectionRefresh.Shared;
using System.Globalization;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// Builds <see cref="ServerConnectionAgeOptions"/> from configuration or code, rejecting missing or misshapen sections,
/// unknown keys and unparsable values, and validating the result. Stateless, so thread-safe.
/// </summary>
internal static class ServerConnectionAgeOptionsLoader
{
    private static readonly string[] KnownKeys =
    [
        nameof(ServerConnectionAgeOptions.MaxConnectionAge),
        nameof(ServerConnectionAgeOptions.MaxConnectionAgeJitter),
        nameof(ServerConnectionAgeOptions.MaxConnectionAgeGrace),
        nameof(ServerConnectionAgeOptions.MaxConnectionIdle),
    ];

    /// <summary>
    /// Binds <paramref name="section"/> onto <paramref name="options"/>; a section that is not an object of settings,
    /// an unknown key or a value that does not parse throws.
    /// </summary>
    public static void Bind(IConfigurationSection section, ServerConnectionAgeOptions options)
    {
        var path = section.Path;
        ThrowIfNotAnObject(section);
        var unknown = section.GetChildren()
            .Where(child => !KnownKeys.Contains(child.Key, StringComparer.OrdinalIgnoreCase))
            .Select(child => child.Path)
            .ToList();
        if (unknown.Count > 0)
        {
            throw new InvalidOperationException(
                $"Unknown configuration key(s) {string.Join(", ", unknown.Select(k => $"'{k}'"))}; "
                + $"the keys of {path} are {string.Join(", ", KnownKeys)}.");
        }

        foreach (var child in section.GetChildren())
        {
            ThrowIfUnparsable(child);
        }

        section.Bind(options);
        foreach (var child in section.GetChildren())
        {
            var name = KnownKeys.First(key => string.Equals(key, child.Key, StringComparison.OrdinalIgnoreCase));
            options.Origins.Bound(name, child.Path, ServerConnectionAgeOptionsValidator.ValueOf(options, name));
        }
    }

    /// <summary>
    /// A value ("5m", 3), or "" (the JSON provider stores [] as "" too), counts as an existing section without settings,
    /// so it would run with the defaults in silence; an array with elements shows as the keys "0", "1", ....
    /// </summary>
    private static void ThrowIfNotAnObject(IConfigurationSection section)
    {
        var keys = section.GetChildren().Select(child => child.Key).ToList();
        var found = section.Value switch
        {
            "" => "an empty value (in JSON, \"\" and [] both give one)",
            { } value => $"the value '{value}'",
            _ when keys.Count > 0 && keys.All(key => key.All(char.IsAsciiDigit)) => $"an array of {keys.Count} element{(keys.Count == 1 ? "" : "s")}",
            _ => null,
        };
        if (found is not null)
        {
            throw new InvalidOperationException(
                $"The configuration section '{section.Path}' must be an object of settings, for example "
                + $"{{ \"MaxConnectionAge\": \"00:05:00\" }}; found {found}. Its keys are {string.Join(", ", KnownKeys)}; "
                + "to run with the defaults, write it as {}.");
        }
    }

    /// <summary>
    /// A section given by path must exist (<see cref="ConfigurationSections.IsGiven"/>): a misspelled path binds nothing and
    /// would run with the defaults in silence.
    /// </summary>
    public static void ThrowIfMissing(IConfigurationSection section, IServiceProvider? services)
    {
        var application = services?.GetService<IConfiguration>();
        if (ConfigurationSections.IsGiven(section, application))
        {
            return;
        }

        throw new InvalidOperationException(
            $"The configuration section '{section.Path}' does not exist, so none of its settings would apply. "
            + ConfigurationSections.WhereThePathStops(application, section.Path)
            + $" Check the path (':' separates levels). To run with the defaults, use the overload without a section (it reads "
            + $"the optional '{ServerConnectionAgeDefaults.SectionName}' section), or write the section as {{}} in the application's configuration.");
    }

    private static void ThrowIfUnparsable(IConfigurationSection child)
    {
        var name = KnownKeys.First(key => string.Equals(key, child.Key, StringComparison.OrdinalIgnoreCase));
        var isJitter = name == nameof(ServerConnectionAgeOptions.MaxConnectionAgeJitter);
        var parsable = isJitter
            ? double.TryParse(child.Value, NumberStyles.Float, CultureInfo.InvariantCulture, out _)
            : TimeSpan.TryParse(child.Value, CultureInfo.InvariantCulture, out _);
        if (!parsable)
        {
            var allowed = ServerConnectionAgeOptionsValidator.AllowedRange(name);
            throw new InvalidOperationException(isJitter
                ? $"{child.Path} is '{child.Value}', which is not a number; allowed: {allowed} (a fraction, such as 0.1)."
                : $"{child.Path} is '{child.Value}', which is not a time span; allowed: {allowed}, written as [d.]hh:mm:ss[.fffffff] (e.g. 00:02:00 for 2 minutes).");
        }
    }

    /// <summary>
    /// Options bound from <paramref name="section"/>, given by the caller (so it must exist, see
    /// <see cref="ThrowIfMissing"/>), and validated.
    /// </summary>
    public static ServerConnectionAgeOptions FromSection(IConfigurationSection section, IServiceProvider? services)
    {
        ThrowIfMissing(section, services);
        return FromAction(options => Bind(section, options));
    }

    /// <summary>Default options changed by <paramref name="configure"/>, validated.</summary>
    public static ServerConnectionAgeOptions FromAction(Action<ServerConnectionAgeOptions> configure)
    {
        var options = new ServerConnectionAgeOptions();
        configure(options);
        ServerConnectionAgeOptionsValidator.ThrowIfInvalid(options);
        return options;
    }

    /// <summary>
    /// The options registered with <c>services.AddServerConnectionAge(...)</c> if there are any; otherwise the
    /// <c>ConnectionRefresh:Server</c> section of the application's configuration (defaults if it is absent).
    /// </summary>
    public static ServerConnectionAgeOptions FromServices(IServiceProvider? services)
    {
        if (services?.GetService<ServerConnectionAgeRegistration>() is not null)
        {
            return services.GetRequiredService<IOptions<ServerConnectionAgeOptions>>().Value;
        }

        var configuration = services?.GetService<IConfiguration>();
        return configuration is null
            ? FromAction(static _ => { })
            : FromAction(options => Bind(configuration.GetSection(ServerConnectionAgeDefaults.SectionName), options));
    }
}
