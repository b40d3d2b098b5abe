using System.Globalization;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// A parsed <c>kubernetes:</c> target: <c>kubernetes:///service.namespace:port</c>,
/// <c>kubernetes:///service:port</c> (namespace of the pod) or <c>kubernetes://namespace/service:port</c>.
/// The port is a number (the port the pods listen on), an EndpointSlice port name, or absent (the only port).
/// Immutable.
/// </summary>
internal sealed record KubernetesTarget(string Service, string? Namespace, int? PortNumber, string? PortName)
{
    /// <summary>Parses <paramref name="address"/>; throws <see cref="FormatException"/> naming the problem.</summary>
    public static KubernetesTarget Parse(Uri address)
    {
        ArgumentNullException.ThrowIfNull(address);
        if (!string.Equals(address.Scheme, KubernetesResolverDefaults.Scheme, StringComparison.OrdinalIgnoreCase))
        {
            throw Invalid(address, $"the scheme must be '{KubernetesResolverDefaults.Scheme}'");
        }

        string? ns = string.IsNullOrEmpty(address.Host) ? null : address.Host.ToLowerInvariant();
        if (!string.IsNullOrEmpty(address.Query) || !string.IsNullOrEmpty(address.Fragment) || address.Port != -1 || address.UserInfo.Length > 0)
        {
            throw Invalid(address, "expected kubernetes:///service.namespace:port or kubernetes://namespace/service:port");
        }

        var path = Uri.UnescapeDataString(address.AbsolutePath.TrimStart('/'));
        if (path.Length == 0 || path.Contains('/', StringComparison.Ordinal))
        {
            throw Invalid(address, "expected kubernetes:///service.namespace:port or kubernetes://namespace/service:port");
        }

        string hostPart = path;
        int? portNumber = null;
        string? portName = null;
        var colon = path.LastIndexOf(':');
        if (colon >= 0)
        {
            hostPart = path[..colon];
            var port = path[(colon + 1)..];
            if (int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out var number))
            {
                if (number is < 1 or > 65535)
                {
                    throw Invalid(address, $"the port is {number}; allowed: 1 to 65535");
                }

                portNumber = number;
            }
            else if (IsPortName(port))
            {
                portName = port;
            }
            else
            {
                throw Invalid(address, $"'{port}' is neither a port number nor a Service port name (a DNS label: lowercase letters, digits and '-', at most 63 characters, with a letter)");
            }
        }

        var labels = hostPart.ToLowerInvariant().Split('.');
        var service = labels[0];
        if (labels.Length >= 2)
        {
            // service.namespace, service.namespace.svc and service.namespace.svc.cluster.local are all accepted.
            if (ns is not null)
            {
                throw Invalid(address, "the namespace is given twice (authority and service.namespace)");
            }

            if (labels.Length > 2 && labels[2] != "svc")
            {
                throw Invalid(address, $"'{hostPart}' is not service.namespace[.svc[.cluster-domain]]");
            }

            ns = labels[1];
        }

        if (!IsDnsLabel(service))
        {
            throw Invalid(address, $"service name '{service}' is not a DNS label");
        }

        if (ns is not null && !IsDnsLabel(ns))
        {
            throw Invalid(address, $"namespace '{ns}' is not a DNS label");
        }

        return new KubernetesTarget(service, ns, portNumber, portName);
    }

    /// <summary>The port part as written, for logs: a number, a name, or "(only port)".</summary>
    public string PortText => PortNumber?.ToString(CultureInfo.InvariantCulture) ?? PortName ?? "(only port)";

    private static FormatException Invalid(Uri address, string reason) =>
        new($"The address '{address}' is not a valid Kubernetes target: {reason}.");

    private static bool IsDnsLabel(string value) =>
        value.Length is > 0 and <= 63 &&
        char.IsAsciiLetterOrDigit(value[0]) && char.IsAsciiLetterOrDigit(value[^1]) &&
        value.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c == '-');

    // The name an EndpointSlice port carries is the Service port's name, a DNS label (up to 63 characters), not a
    // container port's IANA_SVC_NAME (up to 15). A letter tells it from a number.
    private static bool IsPortName(string value) => IsDnsLabel(value) && value.Any(char.IsAsciiLetter);
}
