using System.Globalization;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// Validates <see cref="KubernetesResolverOptions"/> at start-up; messages name the key, the value and the range. A
/// <see cref="KubernetesResolverOptions.KubeconfigPath"/> must name a readable kubeconfig whose current context has a cluster
/// with a server (its credential plugin, if any, is not run here).
/// </summary>
internal sealed class KubernetesResolverOptionsValidator : IValidateOptions<KubernetesResolverOptions>
{
    private const string Prefix = KubernetesResolverDefaults.ConfigurationSection + ":";

    public ValidateOptionsResult Validate(string? name, KubernetesResolverOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var failures = new List<string>();

        CheckRange(failures, nameof(options.ResyncInterval), options.ResyncInterval,
            KubernetesResolverDefaults.MinResyncInterval, KubernetesResolverDefaults.MaxResyncInterval);
        CheckRange(failures, nameof(options.InitialBackoff), options.InitialBackoff,
            KubernetesResolverDefaults.MinInitialBackoff, KubernetesResolverDefaults.MaxInitialBackoff);
        CheckRange(failures, nameof(options.MaxBackoff), options.MaxBackoff,
            KubernetesResolverDefaults.MinMaxBackoff, KubernetesResolverDefaults.MaxMaxBackoff);

        if (options.MaxBackoff < options.InitialBackoff)
        {
            failures.Add(string.Create(CultureInfo.InvariantCulture,
                $"{Prefix}{nameof(options.MaxBackoff)} = {options.MaxBackoff} is less than {Prefix}{nameof(options.InitialBackoff)} = {options.InitialBackoff}: it must be at least as long."));
        }

        if (options.ApiServer is { } apiServer &&
            (!apiServer.IsAbsoluteUri || (apiServer.Scheme != Uri.UriSchemeHttp && apiServer.Scheme != Uri.UriSchemeHttps)))
        {
            failures.Add($"{Prefix}{nameof(options.ApiServer)} = '{apiServer}' is not valid: it must be an absolute http:// or https:// URI.");
        }

        if (options.ApiServer is not null && !string.IsNullOrEmpty(options.KubeconfigPath))
        {
            failures.Add($"{Prefix}{nameof(options.ApiServer)} = '{options.ApiServer}' and {Prefix}{nameof(options.KubeconfigPath)} = '{options.KubeconfigPath}' are both set: set at most one of them.");
        }

        if (options.ApiServer is null && !string.IsNullOrEmpty(options.KubeconfigPath))
        {
            // A file the user named: check it now (without running credential plugins) rather than on the first call.
            try
            {
                KubernetesClientConfigurationFactory.CheckKubeconfig(options.KubeconfigPath, $"{Prefix}{nameof(options.KubeconfigPath)} = '{options.KubeconfigPath}'");
            }
            catch (InvalidOperationException ex)
            {
                failures.Add(ex.Message);
            }
        }

        if (string.IsNullOrWhiteSpace(options.ServiceAccountPath))
        {
            failures.Add($"{Prefix}{nameof(options.ServiceAccountPath)} = '{options.ServiceAccountPath}' is not valid: it must be a directory path (default '{KubernetesResolverDefaults.ServiceAccountPath}').");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }

    /// <summary>
    /// The allowed range or form of a setting, in words ("between 00:00:01 and 1.00:00:00"), for out-of-range values here
    /// and for configuration values that do not parse (<c>KubernetesResolverServiceCollectionExtensions.Bind</c>).
    /// </summary>
    public static string AllowedRange(string setting) => setting switch
    {
        nameof(KubernetesResolverOptions.ResyncInterval) => Between(KubernetesResolverDefaults.MinResyncInterval, KubernetesResolverDefaults.MaxResyncInterval),
        nameof(KubernetesResolverOptions.InitialBackoff) => Between(KubernetesResolverDefaults.MinInitialBackoff, KubernetesResolverDefaults.MaxInitialBackoff),
        nameof(KubernetesResolverOptions.MaxBackoff) => Between(KubernetesResolverDefaults.MinMaxBackoff, KubernetesResolverDefaults.MaxMaxBackoff),
        nameof(KubernetesResolverOptions.IncludeTerminatingEndpoints) => "true or false",
        nameof(KubernetesResolverOptions.ApiServer) => "an absolute http:// or https:// URI",
        _ => "see KubernetesResolverOptions",
    };

    private static void CheckRange(List<string> failures, string key, TimeSpan value, TimeSpan min, TimeSpan max)
    {
        if (value < min || value > max)
        {
            failures.Add(string.Create(CultureInfo.InvariantCulture,
                $"{Prefix}{key} = {value} is out of range: it must be {AllowedRange(key)}."));
        }
    }

    private static string Between(TimeSpan min, TimeSpan max) => string.Create(CultureInfo.InvariantCulture, $"between {min} and {max}");
}
