using Microsoft.Extensions.Configuration;

namespace ConnectionRefresh.Shared;

/// <summary>
/// Checks for a configuration section given by path, which must exist: a misspelled path binds nothing and would run with
/// the defaults in silence. Linked into each package, so the three registrations tell a typo the same way.
/// </summary>
internal static class ConfigurationSections
{
    /// <summary>
    /// Whether <paramref name="section"/> is there. <see cref="ConfigurationExtensions.Exists"/> is false for
    /// <c>"Section": {}</c> too (the JSON provider stores it as the key with a null value), but the application's
    /// configuration still lists that key under its parent, which tells a deliberate empty section from a typo. Without
    /// the application's configuration (a hand-made service provider) an empty section counts as missing.
    /// </summary>
    public static bool IsGiven(IConfigurationSection section, IConfiguration? application) =>
        section.Exists() || (application is not null && IsListed(application, section.Path));

    /// <summary>
    /// Names the keys of the deepest level of <paramref name="path"/> that has any, so that a typo shows next to what is
    /// there ("'Clients' has: Greeter."). Sections come before plain values: at the top level of a host's configuration
    /// the environment variables (dozens of values, <c>AWS_…</c>, <c>CLI_…</c>) would otherwise fill the list of ten
    /// and leave out the sections a misspelled path is meant to be compared with (<c>Clients</c>, <c>Logging</c>).
    /// </summary>
    public static string WhereThePathStops(IConfiguration? application, string path)
    {
        if (application is null)
        {
            return "There is no IConfiguration in the application's services to tell a section written as {} from a missing one.";
        }

        for (var parent = ConfigurationPath.GetParentPath(path); ; parent = ConfigurationPath.GetParentPath(parent))
        {
            var keys = (parent is null ? application : application.GetSection(parent)).GetChildren()
                .OrderBy(child => child.Value is null ? 0 : 1) // stable: sections, then values, each in the provider's order
                .Select(child => child.Key)
                .ToList();
            if (keys.Count > 0 || parent is null)
            {
                return keys.Count == 0
                    ? "The application's configuration is empty."
                    : $"{(parent is null ? "The top level" : $"'{parent}'")} has: {string.Join(", ", keys.Take(10))}"
                      + (keys.Count > 10 ? $" and {keys.Count - 10} more." : ".");
            }
        }
    }

    private static bool IsListed(IConfiguration configuration, string path) =>
        (ConfigurationPath.GetParentPath(path) is { } parent ? configuration.GetSection(parent) : configuration)
            .GetChildren().Any(child => string.Equals(child.Key, ConfigurationPath.GetSectionKey(path), StringComparison.OrdinalIgnoreCase));
}
