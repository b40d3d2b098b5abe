namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>One usable endpoint; ordered so that two results can be compared cheaply.</summary>
internal readonly record struct ResolvedEndpoint(string Host, int Port) : IComparable<ResolvedEndpoint>
{
    public int CompareTo(ResolvedEndpoint other)
    {
        var byHost = string.CompareOrdinal(Host, other.Host);
        return byHost != 0 ? byHost : Port.CompareTo(other.Port);
    }

    public override string ToString() => Host.Contains(':', StringComparison.Ordinal) ? $"[{Host}]:{Port}" : $"{Host}:{Port}";
}
