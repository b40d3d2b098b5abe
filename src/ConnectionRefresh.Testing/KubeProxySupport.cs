using System.Diagnostics.CodeAnalysis;
using System.Net;
using ConnectionRefresh.Testing.Internal;

namespace ConnectionRefresh.Testing;

/// <summary>Tells whether <see cref="KubeProxyMode.Iptables"/> can run on this machine, and if not, why.</summary>
public static class KubeProxySupport
{
    private static readonly Lazy<string?> Problem = new(Probe);

    /// <summary>
    /// Checks, once per process, that <see cref="KubeProxyMode.Iptables"/> can run: Linux, root, <c>ip</c> and
    /// <c>iptables-restore</c> present, and a real probe (create a network namespace, load statistic/DNAT rules, remove it) succeeds.
    /// </summary>
    /// <param name="reason">Why not, when the answer is <see langword="false"/>; otherwise <see langword="null"/>.</param>
    /// <returns><see langword="true"/> when the iptables mode can run.</returns>
    /// <example><c>Skip.IfNot(KubeProxySupport.IsIptablesSupported(out var reason), reason);</c></example>
    public static bool IsIptablesSupported([NotNullWhen(false)] out string? reason)
    {
        reason = Problem.Value;
        return reason is null;
    }

    private static string? Probe()
    {
        if (!OperatingSystem.IsLinux())
        {
            return "the iptables mode needs Linux (network namespaces and iptables).";
        }

        if (!Environment.IsPrivilegedProcess)
        {
            return "the iptables mode needs root (it creates a network namespace and writes iptables rules in it).";
        }

        foreach (var tool in new[] { "ip", "iptables-restore" })
        {
            if (ProcessRunner.Find(tool) is null)
            {
                return $"'{tool}' was not found (install iproute2 and iptables).";
            }
        }

        try
        {
            ProbeAsync().GetAwaiter().GetResult();
            return null;
        }
#pragma warning disable CA1031 // Any failure means "not supported", with its message as the reason.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            return $"the probe failed: {ex.Message}";
        }
    }

    private static async Task ProbeAsync()
    {
        var proxy = await IptablesProxy.CreateAsync(CancellationToken.None).ConfigureAwait(false);
        try
        {
            // Every kind of rule the cluster writes: DNATs and a black-holed pod's SYN drop.
            var rules = new IptablesProxy.EndpointRules([new(IPAddress.Loopback, 9), new(IPAddress.Loopback, 10)], [new(IPAddress.Loopback, 10)]);
            await proxy.ApplyEndpointsAsync(() => rules, CancellationToken.None).ConfigureAwait(false);
        }
        finally
        {
            await proxy.DisposeAsync().ConfigureAwait(false);
        }
    }
}
