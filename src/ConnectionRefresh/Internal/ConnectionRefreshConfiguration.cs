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

    // Sub-sections that belong to the sibling packages (ConnectionRefresh.Server, ConnectionRefresh.Kubernetes).
    private static readonly HashSet<string> SiblingSections = new(StringComparer.OrdinalIgnoreCase) { "Server", "Kubernetes" };

    public static void Bind(ConnectionRefreshOptions options, IConfigurationSection section, string clientName)
    {
        foreach (var entry in section.GetChildren())
        {
            if (SiblingSections.Contains(entry.Key) && entry.Value is null)
            {
                continue;
            }

            if (!Settings.TryGetValue(entry.Key, out var property))
            {
                throw new InvalidOperationException(
                    $"Unknown ConnectionRefresh setting '{entry.Path}' for HTTP client '{clientName}'. " +
                    $"Known settings: {string.Join(", ", Settings.Keys.Order(StringComparer.Ordinal))}.");
            }

            // The binder would read a setting written as an object ("MaxConnectionAgeJitter": { "Value": 0.2 }) as the
            // type's default (a jitter of 0, no request limit) or as nothing at all, without a word.
            if (entry.GetChildren().FirstOrDefault() is { } nested)
            {
                throw new InvalidOperationException(
                    $"Unknown ConnectionRefresh setting '{nested.Path}' for HTTP client '{clientName}': '{entry.Path}' takes a single value " +
                    $"({ConnectionRefreshOptionsValidator.AllowedRange(property.Name)}), not sub-keys.");
            }

            property.SetValue(options, Convert(entry, property, clientName));
        }
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
            throw new InvalidOperationException(
                $"ConnectionRefresh setting '{entry.Path}' of HTTP client '{clientName}' has the value '{entry.Value}', " +
                $"which is not a valid {Nullable.GetUnderlyingType(property.PropertyType)?.Name ?? property.PropertyType.Name}; " +
                $"allowed: {ConnectionRefreshOptionsValidator.AllowedRange(property.Name)}.",
                exception);
        }
    }
}
