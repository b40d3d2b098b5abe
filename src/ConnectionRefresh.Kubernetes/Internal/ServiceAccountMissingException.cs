namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>
/// In a pod, the service account directory (<see cref="KubernetesResolverOptions.ServiceAccountPath"/>) does not exist: no
/// token is mounted (<c>automountServiceAccountToken: false</c>, or a projected token volume mounted elsewhere). A
/// configuration mistake rather than a file the kubelet has not written yet: the resolver logs it once as an error and keeps
/// checking with its backoff (a volume may still appear), without a warning per retry.
/// </summary>
internal sealed class ServiceAccountMissingException : DirectoryNotFoundException
{
    public ServiceAccountMissingException()
        : this("The service account directory does not exist.")
    {
    }

    public ServiceAccountMissingException(string message)
        : base(message)
    {
    }

    public ServiceAccountMissingException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
