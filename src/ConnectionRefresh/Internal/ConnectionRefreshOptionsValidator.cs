using System.Globalization;
using Microsoft.Extensions.Options;
using static ConnectionRefresh.Internal.ConnectionRefreshDefaults;

namespace ConnectionRefresh.Internal;

/// <summary>
/// Checks every setting against its range; each message names the setting (its configuration key when the value came from
/// configuration, the property when it was set in code), the value and the range.
/// </summary>
internal sealed class ConnectionRefreshOptionsValidator : IValidateOptions<ConnectionRefreshOptions>
{
    public ValidateOptionsResult Validate(string? name, ConnectionRefreshOptions options)
    {
        var failures = new List<string>();
        var client = string.IsNullOrEmpty(name) ? "(default)" : name;

        void Check(bool valid, string setting, object? value)
        {
            if (!valid)
            {
                failures.Add(string.Create(CultureInfo.InvariantCulture,
                    $"ConnectionRefresh setting '{options.Origins.Name(setting, value)}' of HTTP client '{client}' is {value ?? "null"}; allowed: {AllowedRange(setting)}."));
            }
        }

        Check(IsAgeInRange(options.MaxConnectionAge, MinAge, MaxAge), nameof(options.MaxConnectionAge), options.MaxConnectionAge);
        Check(options.MaxConnectionAgeJitter is >= 0 and <= MaxJitter, nameof(options.MaxConnectionAgeJitter), options.MaxConnectionAgeJitter);
        Check(options.MaxRequestsPerConnection is null or (>= 1 and <= MaxRequests), nameof(options.MaxRequestsPerConnection), options.MaxRequestsPerConnection);
        Check(options.ConnectionsPerEndpoint is >= 1 and <= MaxConnections, nameof(options.ConnectionsPerEndpoint), options.ConnectionsPerEndpoint);
        Check(IsAgeInRange(options.KeepAlivePingDelay, MinPing, MaxAge), nameof(options.KeepAlivePingDelay), options.KeepAlivePingDelay);
        Check(options.KeepAlivePingTimeout >= MinPing && options.KeepAlivePingTimeout <= MaxPingTimeout, nameof(options.KeepAlivePingTimeout), options.KeepAlivePingTimeout);
        Check(Enum.IsDefined(options.KeepAlivePingPolicy), nameof(options.KeepAlivePingPolicy), options.KeepAlivePingPolicy);
        Check(IsAgeInRange(options.PooledConnectionIdleTimeout, MinAge, MaxAge), nameof(options.PooledConnectionIdleTimeout), options.PooledConnectionIdleTimeout);
        Check(IsAgeInRange(options.ConnectTimeout, MinConnectTimeout, MaxConnectTimeout), nameof(options.ConnectTimeout), options.ConnectTimeout);
        Check(IsAgeInRange(options.DrainTimeout, MinAge, MaxAge), nameof(options.DrainTimeout), options.DrainTimeout);

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }

    /// <summary>The allowed range of a setting, in words, for validation and configuration errors.</summary>
    public static string AllowedRange(string setting) => setting switch
    {
        nameof(ConnectionRefreshOptions.MaxConnectionAge) or nameof(ConnectionRefreshOptions.KeepAlivePingDelay)
            or nameof(ConnectionRefreshOptions.PooledConnectionIdleTimeout) or nameof(ConnectionRefreshOptions.DrainTimeout)
            => Span(setting == nameof(ConnectionRefreshOptions.KeepAlivePingDelay) ? MinPing : MinAge, MaxAge) + ", or -00:00:00.001 (Timeout.InfiniteTimeSpan, off)",
        nameof(ConnectionRefreshOptions.ConnectTimeout) => Span(MinConnectTimeout, MaxConnectTimeout) + ", or -00:00:00.001 (Timeout.InfiniteTimeSpan)",
        nameof(ConnectionRefreshOptions.KeepAlivePingTimeout) => Span(MinPing, MaxPingTimeout),
        nameof(ConnectionRefreshOptions.MaxConnectionAgeJitter) => string.Create(CultureInfo.InvariantCulture, $"0 to {MaxJitter} (a fraction of MaxConnectionAge)"),
        nameof(ConnectionRefreshOptions.MaxRequestsPerConnection) => string.Create(CultureInfo.InvariantCulture, $"1 to {MaxRequests}, or empty (no limit)"),
        nameof(ConnectionRefreshOptions.ConnectionsPerEndpoint) => string.Create(CultureInfo.InvariantCulture, $"1 to {MaxConnections}"),
        nameof(ConnectionRefreshOptions.KeepAlivePingPolicy) => string.Join(" or ", Enum.GetNames<HttpKeepAlivePingPolicy>()),
        _ => "see ConnectionRefreshOptions",
    };

    private static bool IsAgeInRange(TimeSpan value, TimeSpan min, TimeSpan max)
        => value == Timeout.InfiniteTimeSpan || (value >= min && value <= max);

    private static string Span(TimeSpan min, TimeSpan max)
        => string.Create(CultureInfo.InvariantCulture, $"{min:c} to {max:c}");
}
