using System.Globalization;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// Checks <see cref="ServerConnectionAgeOptions"/> against the ranges of <see cref="ServerConnectionAgeDefaults"/>.
/// Each message names the key (the configuration path when the value came from configuration, the property when it was
/// set in code), the value and the allowed range. Stateless, so thread-safe.
/// </summary>
internal sealed class ServerConnectionAgeOptionsValidator : IValidateOptions<ServerConnectionAgeOptions>
{
    public ValidateOptionsResult Validate(string? name, ServerConnectionAgeOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var failures = GetFailures(options);
        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }

    /// <summary>Throws an <see cref="OptionsValidationException"/> listing every bad setting.</summary>
    public static void ThrowIfInvalid(ServerConnectionAgeOptions options)
    {
        var failures = GetFailures(options);
        if (failures.Count > 0)
        {
            throw new OptionsValidationException(Options.DefaultName, typeof(ServerConnectionAgeOptions), failures);
        }
    }

    public static List<string> GetFailures(ServerConnectionAgeOptions options)
    {
        var failures = new List<string>();

        CheckTime(failures, options, nameof(options.MaxConnectionAge), options.MaxConnectionAge,
            ServerConnectionAgeDefaults.MinAge, ServerConnectionAgeDefaults.MaxAge);
        CheckTime(failures, options, nameof(options.MaxConnectionAgeGrace), options.MaxConnectionAgeGrace,
            ServerConnectionAgeDefaults.MinGrace, ServerConnectionAgeDefaults.MaxGrace);
        CheckTime(failures, options, nameof(options.MaxConnectionIdle), options.MaxConnectionIdle,
            ServerConnectionAgeDefaults.MinIdle, ServerConnectionAgeDefaults.MaxIdle);

        var jitter = options.MaxConnectionAgeJitter;
        if (double.IsNaN(jitter) || jitter < ServerConnectionAgeDefaults.MinJitter || jitter > ServerConnectionAgeDefaults.MaxJitter)
        {
            var name = nameof(options.MaxConnectionAgeJitter);
            failures.Add(string.Create(CultureInfo.InvariantCulture, $"{options.Origins.Name(name, jitter)} is {jitter}; allowed: {AllowedRange(name)}."));
        }

        return failures;
    }

    /// <summary>
    /// The allowed values of a setting in words ("00:00:01 to 1.00:00:00, or -00:00:00.001 (infinite, off)"), for
    /// out-of-range values here and for configuration values that do not parse (the options loader).
    /// </summary>
    public static string AllowedRange(string name) => name switch
    {
        nameof(ServerConnectionAgeOptions.MaxConnectionAge) => TimeRange(ServerConnectionAgeDefaults.MinAge, ServerConnectionAgeDefaults.MaxAge),
        nameof(ServerConnectionAgeOptions.MaxConnectionAgeGrace) => TimeRange(ServerConnectionAgeDefaults.MinGrace, ServerConnectionAgeDefaults.MaxGrace),
        nameof(ServerConnectionAgeOptions.MaxConnectionIdle) => TimeRange(ServerConnectionAgeDefaults.MinIdle, ServerConnectionAgeDefaults.MaxIdle),
        nameof(ServerConnectionAgeOptions.MaxConnectionAgeJitter) => string.Create(
            CultureInfo.InvariantCulture, $"{ServerConnectionAgeDefaults.MinJitter} to {ServerConnectionAgeDefaults.MaxJitter}"),
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, "Not a setting of ServerConnectionAgeOptions."),
    };

    /// <summary>The value of the setting <paramref name="name"/> (a property name), boxed, to compare with what was bound.</summary>
    public static object ValueOf(ServerConnectionAgeOptions options, string name) => name switch
    {
        nameof(ServerConnectionAgeOptions.MaxConnectionAge) => options.MaxConnectionAge,
        nameof(ServerConnectionAgeOptions.MaxConnectionAgeJitter) => options.MaxConnectionAgeJitter,
        nameof(ServerConnectionAgeOptions.MaxConnectionAgeGrace) => options.MaxConnectionAgeGrace,
        nameof(ServerConnectionAgeOptions.MaxConnectionIdle) => options.MaxConnectionIdle,
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, "Not a setting of ServerConnectionAgeOptions."),
    };

    private static void CheckTime(List<string> failures, ServerConnectionAgeOptions options, string name, TimeSpan value, TimeSpan min, TimeSpan max)
    {
        if (value == Timeout.InfiniteTimeSpan || (value >= min && value <= max))
        {
            return;
        }

        failures.Add(string.Create(CultureInfo.InvariantCulture, $"{options.Origins.Name(name, value)} is {value:c}; allowed: {AllowedRange(name)}."));
    }

    private static string TimeRange(TimeSpan min, TimeSpan max)
        => string.Create(CultureInfo.InvariantCulture, $"{min:c} to {max:c}, or {Timeout.InfiniteTimeSpan:c} (infinite, off)");
}
