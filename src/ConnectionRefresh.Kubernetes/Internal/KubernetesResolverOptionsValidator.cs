using System.Globalization;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// Validates <see cref="KubernetesResolverOptions"/> at start-up; messages name the key (the configuration key when the value
/// came from configuration, the property when it was set in code), the value and the range, as the other packages word them:
/// "<c>key</c> is <c>value</c>; allowed: <c>range</c>." A
/// <see cref="KubernetesResolverOptions.KubeconfigPath"/> must name a readable kubeconfig whose current context has a cluster
/// with a server (its credential plugin, if any, is not run here).
/// </summary>
internal sealed class KubernetesResolverOptionsValidator : IValidateOptions<KubernetesResolverOptions>
{
    public ValidateOptionsResult Validate(string? name, KubernetesResolverOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var failures = new List<string>();

        CheckRange(failures, options, nameof(options.ResyncInterval), options.ResyncInterval,
            KubernetesResolverDefaults.MinResyncInterval, KubernetesResolverDefaults.MaxResyncInterval);
        CheckRange(failures, options, nameof(options.InitialBackoff), options.InitialBackoff,
            KubernetesResolverDefaults.MinInitialBackoff, KubernetesResolverDefaults.MaxInitialBackoff);
        CheckRange(failures, options, nameof(options.MaxBackoff), options.MaxBackoff,
            KubernetesResolverDefaults.MinMaxBackoff, KubernetesResolverDefaults.MaxMaxBackoff);

        if (options.MaxBackoff < options.InitialBackoff)
        {
            failures.Add(string.Create(CultureInfo.InvariantCulture,
                $"{Key(options, nameof(options.MaxBackoff))} is {options.MaxBackoff}; allowed: at least {Key(options, nameof(options.InitialBackoff))}, which is {options.InitialBackoff}."));
        }

        if (options.ApiServer is { } apiServer &&
            (!apiServer.IsAbsoluteUri || (apiServer.Scheme != Uri.UriSchemeHttp && apiServer.Scheme != Uri.UriSchemeHttps)))
        {
            failures.Add($"{Key(options, nameof(options.ApiServer))} is '{apiServer}'; allowed: {AllowedRange(nameof(options.ApiServer))}.");
        }

        if (options.ApiServer is not null && !string.IsNullOrEmpty(options.KubeconfigPath))
        {
            failures.Add($"{Key(options, nameof(options.ApiServer))} is '{options.ApiServer}' and {Key(options, nameof(options.KubeconfigPath))} is '{options.KubeconfigPath}'; allowed: at most one of them set.");
        }

        if (options.ApiServer is null && !string.IsNullOrEmpty(options.KubeconfigPath))
        {
            // A file the user named: check it now (without running credential plugins) rather than on the first call.
            try
            {
                KubernetesClientConfigurationFactory.CheckKubeconfig(options.KubeconfigPath, $"{Key(options, nameof(options.KubeconfigPath))} = '{options.KubeconfigPath}'");
            }
            catch (InvalidOperationException ex)
            {
                failures.Add(ex.Message);
            }
        }

        if (string.IsNullOrWhiteSpace(options.ServiceAccountPath))
        {
            failures.Add($"{Key(options, nameof(options.ServiceAccountPath))} is '{options.ServiceAccountPath}'; allowed: a directory path (default '{KubernetesResolverDefaults.ServiceAccountPath}').");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }

    /// <summary>
    /// The allowed range or form of a setting, in words ("00:00:01 to 1.00:00:00"), for out-of-range values here
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

    // The setting's configuration key or property, for the message (see SettingOrigins).
    private static string Key(KubernetesResolverOptions options, string name)
        => options.Origins.Name(name, typeof(KubernetesResolverOptions).GetProperty(name)!.GetValue(options));

    private static void CheckRange(List<string> failures, KubernetesResolverOptions options, string name, TimeSpan value, TimeSpan min, TimeSpan max)
    {
        if (value < min || value > max)
        {
            failures.Add(string.Create(CultureInfo.InvariantCulture,
                $"{Key(options, name)} is {value}; allowed: {AllowedRange(name)}."));
        }
    }

    private static string Between(TimeSpan min, TimeSpan max) => string.Create(CultureInfo.InvariantCulture, $"{min} to {max}");
}
