using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// What a connection needs to know about the host's shutdown: whether it has begun (a close Kestrel requests then is
/// the server's shutdown) and how long Kestrel then waits for running calls before it aborts them. Immutable.
/// </summary>
/// <param name="ShutdownTimeout"><see cref="HostOptions.ShutdownTimeout"/>: the most calls get once Kestrel's shutdown began.</param>
/// <param name="ApplicationStopping"><see cref="IHostApplicationLifetime.ApplicationStopping"/>; none without a host.</param>
internal sealed record HostStopping(TimeSpan ShutdownTimeout, CancellationToken ApplicationStopping)
{
    /// <summary>No host (a hand-made endpoint): a close Kestrel requests is never taken for a shutdown.</summary>
    public static readonly HostStopping None = new(Timeout.InfiniteTimeSpan, CancellationToken.None);

    public static HostStopping From(IServiceProvider? services)
    {
        var lifetime = (IHostApplicationLifetime?)services?.GetService(typeof(IHostApplicationLifetime));
        if (lifetime is null)
        {
            return None;
        }

        // The host's default (30 s) when its options are not registered (a host that registers the lifetime itself).
        var options = (IOptions<HostOptions>?)services!.GetService(typeof(IOptions<HostOptions>));
        return new((options?.Value ?? new HostOptions()).ShutdownTimeout, lifetime.ApplicationStopping);
    }
}
