using System.Globalization;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// Checks <see cref="ServerConnectionAgeOptions"/> against the ranges of <see cref="ServerConnectionAgeDefaults"/>.
/// Each message names the key (the configuration path when the options came from configuration), the value and
/// the allowed range. Stateless, so thread-safe.
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
        var prefix = options.ConfigurationPath is { Length: > 0 } path ? path + ":" : nameof(ServerConnectionAgeOptions) + ".";
        var failures = new List<string>();

        CheckTime(failures, prefix + nameof(options.MaxConnectionAge), options.MaxConnectionAge,
            ServerConnectionAgeDefaults.MinAge, ServerConnectionAgeDefaults.MaxAge);
        CheckTime(failures, prefix + nameof(options.MaxConnectionAgeGrace), options.MaxConnectionAgeGrace,
            ServerConnectionAgeDefaults.MinGrace, ServerConnectionAgeDefaults.MaxGrace);
        CheckTime(failures, prefix + nameof(options.MaxConnectionIdle), options.MaxConnectionIdle,
            ServerConnectionAgeDefaults.MinIdle, ServerConnectionAgeDefaults.MaxIdle);

        var jitter = options.MaxConnectionAgeJitter;
        if (double.IsNaN(jitter) || jitter < ServerConnectionAgeDefaults.MinJitter || jitter > ServerConnectionAgeDefaults.MaxJitter)
        {
            failures.Add(string.Format(
                CultureInfo.InvariantCulture,
                "{0} is {1}; allowed: {2} to {3}.",
                prefix + nameof(options.MaxConnectionAgeJitter),
                jitter,
                ServerConnectionAgeDefaults.MinJitter,
                ServerConnectionAgeDefaults.MaxJitter));
        }

        return failures;
    }

    private static void CheckTime(List<string> failures, string key, TimeSpan value, TimeSpan min, TimeSpan max)
    {
        if (value == Timeout.InfiniteTimeSpan || (value >= min && value <= max))
        {
            return;
        }

        failures.Add(string.Format(
            CultureInfo.InvariantCulture,
            "{0} is {1:c}; allowed: {2:c} to {3:c}, or {4:c} (infinite, off).",
            key,
            value,
            min,
            max,
            Timeout.InfiniteTimeSpan));
    }
}
