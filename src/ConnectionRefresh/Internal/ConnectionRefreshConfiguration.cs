using ConnectionRefresh.Shared;
using System.Globalization;
using System.Reflection;
using Microsoft.Extensions.Configuration;

namespace ConnectionRefresh.Internal;

/// <summary>
/// Binds a configuration section to <see cref="ConnectionRefreshOptions"/> one key at a time, so that an
/// unknown key or an unparsable value fails with the key's full path, the value and the allowed range.
/// </summary>
internal static class ConnectionRefreshConfiguration
{
    private static readonly Dictionary<string, PropertyInfo> Settings = typeof(ConnectionRefreshOptions)
        .GetProperties(BindingFlags.Public | BindingFlags.Instance)
        .ToDictionary(p => p.Name, StringComparer.OrdinalIgnoreCase);

    // The sub-sections of the default section that belong to the sibling packages, which read them by default
    // (AddServerConnectionAge(): 'ConnectionRefresh:Server', AddKubernetesResolver(): 'ConnectionRefresh:Kubernetes'),
    // with the package, its registration and one of its keys for messages.
    private static readonly Dictionary<string, (string Package, string Registration, string ExampleKey)> SiblingSections =
        new(StringComparer.OrdinalIgnoreCase)
        {
            ["Server"] = ("ConnectionRefresh.Server", "AddServerConnectionAge()", "MaxConnectionAge"),
            ["Kubernetes"] = ("ConnectionRefresh.Kubernetes", "AddKubernetesResolver()", "ResyncInterval"),
        };

    public static void Bind(ConnectionRefreshOptions options, IConfigurationSection section, string clientName)
    {
        ThrowIfNotAnObject(section, clientName);

        // Only where the sibling packages read them: in a section of the application's choice ('Clients:Greeter') a
        // 'Server' key is not read by anyone, so it is unknown there like any other key.
        var isDefaultSection = string.Equals(section.Path, ConnectionRefreshDefaults.SectionName, StringComparison.OrdinalIgnoreCase);
        foreach (var entry in section.GetChildren())
        {
            if (isDefaultSection && SiblingSections.TryGetValue(entry.Key, out var sibling))
            {
                // An empty value sets nothing, as for any section; a value where the package's section belongs is a mistake
                // (e.g. ConnectionRefresh:Server=http://greeter:5000, taken for the server's address).
                if (!string.IsNullOrEmpty(entry.Value))
                {
                    throw new InvalidOperationException(
                        $"'{entry.Path}' (read for HTTP client '{clientName}') has the value '{entry.Value}', but it is not a client setting: it is " +
                        $"the section of the {sibling.Package} package, which {sibling.Registration} reads, and holds keys such as " +
                        $"'{entry.Path}{ConfigurationPath.KeyDelimiter}{sibling.ExampleKey}', not a value. The client's own settings go directly under " +
                        $"'{section.Path}': {string.Join(", ", Settings.Keys.Order(StringComparer.Ordinal))}.");
                }

                continue;
            }

            if (!Settings.TryGetValue(entry.Key, out var property))
            {
                var hint = SiblingSections.TryGetValue(entry.Key, out var other)
                    ? $" '{entry.Key}' is skipped only in the '{ConnectionRefreshDefaults.SectionName}' section, as " +
                      $"'{ConnectionRefreshDefaults.SectionName}{ConfigurationPath.KeyDelimiter}{entry.Key}', which the {other.Package} package reads " +
                      $"({other.Registration}); in a section given to AddConnectionRefresh nothing reads it: keep that package's settings outside the client's section."
                    : "";
                throw new InvalidOperationException(
                    $"Unknown ConnectionRefresh setting '{entry.Path}' for HTTP client '{clientName}'. " +
                    $"Known settings: {string.Join(", ", Settings.Keys.Order(StringComparer.Ordinal))}.{hint}");
            }

            // The binder would read a setting written as an object ("MaxConnectionAgeJitter": { "Value": 0.2 }) as the
            // type's default (a jitter of 0, no request limit) or as nothing at all, without a word.
            if (entry.GetChildren().FirstOrDefault() is { } nested)
            {
                throw new InvalidOperationException(
                    $"Unknown ConnectionRefresh setting '{nested.Path}' for HTTP client '{clientName}': '{entry.Path}' takes a single value " +
                    $"({ConnectionRefreshOptionsValidator.AllowedRange(property.Name)}), not sub-keys.");
            }

            var value = Convert(entry, property, clientName);
            property.SetValue(options, value);
            options.Origins.Bound(property.Name, entry.Path, value);
        }
    }

    /// <summary>
    /// The section must be an object of settings. A scalar ("5m", 3) counts as an existing section yet has no settings, so
    /// it would run with the defaults in silence. An empty value is not one: as for Microsoft's binder it sets nothing (an
    /// empty environment variable <c>ConnectionRefresh=</c>; the JSON provider stores "" and [] so), and any keys under it
    /// still bind. An array with elements shows as the keys "0", "1", ..., which would otherwise fail as the unknown setting '...:0'.
    /// </summary>
    private static void ThrowIfNotAnObject(IConfigurationSection section, string clientName)
    {
        string found;
        if (section.Value is { Length: > 0 } value)
        {
            found = $"found the value '{value}'";
        }
        else
        {
            var elements = section.GetChildren().Select(child => child.Key).ToList();
            if (elements.Count == 0 || !elements.All(key => int.TryParse(key, NumberStyles.None, CultureInfo.InvariantCulture, out _)))
            {
                return;
            }

            found = $"found an array of {elements.Count} element{(elements.Count == 1 ? "" : "s")}; write the settings as one object, not a list";
        }

        throw new InvalidOperationException(
            $"ConnectionRefresh section '{section.Path}' for HTTP client '{clientName}' must be an object of settings " +
            $"(e.g. {{ \"MaxConnectionAge\": \"00:05:00\" }}); {found}. Known settings: " +
            $"{string.Join(", ", Settings.Keys.Order(StringComparer.Ordinal))}. To run with the defaults, write the section as {{}}.");
    }

    /// <summary>
    /// A section given by path must exist (<see cref="ConfigurationSections.IsGiven"/>): a misspelled path binds nothing and
    /// would run with the defaults in silence.
    /// </summary>
    public static void ThrowIfMissing(IConfigurationSection section, IConfiguration? application, string clientName)
    {
        if (ConfigurationSections.IsGiven(section, application))
        {
            return;
        }

        throw new InvalidOperationException(
            $"The ConnectionRefresh configuration section '{section.Path}' given for HTTP client '{clientName}' does not exist, " +
            $"so none of its settings would apply. {ConfigurationSections.WhereThePathStops(application, section.Path)} Check the path (':' separates levels). " +
            "To run with the defaults on purpose, call AddConnectionRefresh() without a section (it reads the optional 'ConnectionRefresh' section) " +
            "or write the section as an empty object ({}) in the application's IConfiguration (the one registered in DI).");
    }

    private static object? Convert(IConfigurationSection entry, PropertyInfo property, string clientName)
    {
        if (string.IsNullOrWhiteSpace(entry.Value) && Nullable.GetUnderlyingType(property.PropertyType) is not null)
        {
            return null;
        }

        try
        {
            return entry.Get(property.PropertyType)
                ?? throw new FormatException("the value is empty");
        }
        catch (Exception exception) when (exception is InvalidOperationException or FormatException)
        {
            // An empty setting fails as it does with Microsoft's binder (it cannot convert "" to a TimeSpan, int or double);
            // unlike an empty section it names one setting, which would otherwise silently keep its default.
            var found = entry.Value is "" ? "is empty" : $"has the value '{entry.Value}'";
            var unset = entry.Value is "" ? " To use the default, remove the key (an empty environment variable still sets it to empty)." : "";
            throw new InvalidOperationException(
                $"ConnectionRefresh setting '{entry.Path}' of HTTP client '{clientName}' {found}, " +
                $"which is not a valid {Nullable.GetUnderlyingType(property.PropertyType)?.Name ?? property.PropertyType.Name}; " +
                $"allowed: {ConnectionRefreshOptionsValidator.AllowedRange(property.Name)}.{unset}",
                exception);
        }
    }
}
