using System.Globalization;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// Builds <see cref="ServerConnectionAgeOptions"/> from configuration or code, rejecting unknown keys and
/// validating the result. Stateless, so thread-safe.
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

    /// <summary>Binds <paramref name="section"/> onto <paramref name="options"/>; an unknown key throws.</summary>
    public static void Bind(IConfiguration section, ServerConnectionAgeOptions options)
    {
        var path = (section as IConfigurationSection)?.Path;
        var unknown = section.GetChildren()
            .Where(child => !KnownKeys.Contains(child.Key, StringComparer.OrdinalIgnoreCase))
            .Select(child => child.Path)
            .ToList();
        if (unknown.Count > 0)
        {
            throw new InvalidOperationException(
                $"Unknown configuration key(s) {string.Join(", ", unknown.Select(k => $"'{k}'"))}; "
                + $"the keys of {path ?? nameof(ServerConnectionAgeOptions)} are {string.Join(", ", KnownKeys)}.");
        }

        foreach (var child in section.GetChildren())
        {
            ThrowIfUnparsable(child);
        }

        section.Bind(options);
        options.ConfigurationPath = path;
    }

    private static void ThrowIfUnparsable(IConfigurationSection child)
    {
        var isJitter = string.Equals(child.Key, nameof(ServerConnectionAgeOptions.MaxConnectionAgeJitter), StringComparison.OrdinalIgnoreCase);
        var parsable = isJitter
            ? double.TryParse(child.Value, NumberStyles.Float, CultureInfo.InvariantCulture, out _)
            : TimeSpan.TryParse(child.Value, CultureInfo.InvariantCulture, out _);
        if (!parsable)
        {
            throw new InvalidOperationException(isJitter
                ? $"{child.Path} is '{child.Value}', which is not a number; expected a fraction such as 0.1."
                : $"{child.Path} is '{child.Value}', which is not a time span; expected for example 00:02:00 (2 minutes), or -00:00:00.001 for off.");
        }
    }

    /// <summary>Options bound from <paramref name="section"/> and validated.</summary>
    public static ServerConnectionAgeOptions FromSection(IConfigurationSection section)
    {
        var options = new ServerConnectionAgeOptions();
        Bind(section, options);
        ServerConnectionAgeOptionsValidator.ThrowIfInvalid(options);
        return options;
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
            : FromSection(configuration.GetSection(ServerConnectionAgeDefaults.SectionName));
    }
}
