namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// Reads environment variables (<c>KUBERNETES_SERVICE_HOST/PORT</c>, <c>KUBECONFIG</c>, <c>HOME</c>). The resolver
/// uses <see cref="Process"/>; tests pass their own so they need not change the process-wide environment.
/// Thread-safe when the delegate is.
/// </summary>
internal sealed class EnvironmentReader(Func<string, string?> read)
{
    /// <summary>The real environment of the process.</summary>
    public static EnvironmentReader Process { get; } = new(Environment.GetEnvironmentVariable);

    /// <summary>The value of the variable, or <see langword="null"/> when it is not set.</summary>
    public string? this[string name] => read(name);
}
