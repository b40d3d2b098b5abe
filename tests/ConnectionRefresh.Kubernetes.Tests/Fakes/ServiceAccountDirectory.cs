namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>A temporary stand-in for /var/run/secrets/kubernetes.io/serviceaccount (token, namespace and, optionally, ca.crt files).</summary>
internal sealed class ServiceAccountDirectory : IDisposable
{
    /// <param name="token">The token file's content.</param>
    /// <param name="ns">The namespace file's content; null: no namespace file.</param>
    /// <param name="caPem">The ca.crt file's content; null: no ca.crt (yet), as outside TLS tests.</param>
    public ServiceAccountDirectory(string token, string? ns = "default", string? caPem = null)
    {
        Path = Directory.CreateTempSubdirectory("k8s-sa-").FullName;
        WriteToken(token);
        if (ns is not null)
        {
            File.WriteAllText(System.IO.Path.Combine(Path, "namespace"), ns);
        }

        if (caPem is not null)
        {
            WriteCa(caPem);
        }
    }

    public string Path { get; }

    /// <summary>Replaces the token atomically, as the kubelet does (write elsewhere, then rename).</summary>
    public void WriteToken(string token)
    {
        var temp = System.IO.Path.Combine(Path, ".token.tmp");
        File.WriteAllText(temp, token + "\n");
        File.Move(temp, System.IO.Path.Combine(Path, "token"), overwrite: true);
    }

    /// <summary>Removes the token, as before the kubelet has mounted it.</summary>
    public void DeleteToken() => File.Delete(System.IO.Path.Combine(Path, "token"));

    /// <summary>Writes <c>ca.crt</c>, the PEM of the cluster's CA.</summary>
    public void WriteCa(string pem) => File.WriteAllText(System.IO.Path.Combine(Path, "ca.crt"), pem);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // Best effort.
        }
    }
}
