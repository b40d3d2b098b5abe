namespace ConnectionRefresh.Shared;

/// <summary>
/// Where each setting of an options object got its value, so that a start-up error names the place to fix: the
/// configuration key while the setting still holds the value that key gave, otherwise the options property (the value
/// was set in code, by the registration's delegate or a later Configure). Naming the key for a value set in code would
/// send the user to a configuration file that holds a good value. Linked into each package; not bindable.
/// </summary>
internal sealed class SettingOrigins(string optionsTypeName)
{
    private readonly Dictionary<string, (string Path, object? Value)> _bound = new(StringComparer.Ordinal);

    /// <summary>Records that configuration key <paramref name="path"/> gave <paramref name="setting"/> <paramref name="value"/>.</summary>
    public void Bound(string setting, string path, object? value) => _bound[setting] = (path, value);

    /// <summary>The configuration key of <paramref name="setting"/> if it still holds <paramref name="currentValue"/>, else <c>Options.Setting</c>.</summary>
    public string Name(string setting, object? currentValue)
        => _bound.TryGetValue(setting, out var bound) && Equals(bound.Value, currentValue) ? bound.Path : optionsTypeName + "." + setting;
}
