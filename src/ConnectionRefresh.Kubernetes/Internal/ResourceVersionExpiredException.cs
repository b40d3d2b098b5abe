namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>The API server answered <c>410 Gone</c>: the watch's resourceVersion is too old; relist.</summary>
internal sealed class ResourceVersionExpiredException : Exception
{
    public ResourceVersionExpiredException()
        : this("The resourceVersion is too old (410 Gone).")
    {
    }

    public ResourceVersionExpiredException(string message)
        : base(message)
    {
    }

    public ResourceVersionExpiredException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
