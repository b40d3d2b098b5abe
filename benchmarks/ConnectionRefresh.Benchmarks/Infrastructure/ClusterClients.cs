using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Grpc.Core;
using Grpc.Net.Client.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace ConnectionRefresh.Benchmarks.Infrastructure;

/// <summary>
/// The client replicas of one strategy on one <see cref="SimulatedCluster"/> (each its own service provider, as separate
/// client pods would be), and what they need next to the cluster: for <see cref="Strategy.KubernetesResolver"/>, a
/// <see cref="SimulatedKubernetesApi"/> that publishes the pods as EndpointSlices, and a service account token.
/// </summary>
internal sealed class ClusterClients : IAsyncDisposable
{
    private const string Token = "bench-token";
    private readonly SimulatedKubernetesApi? _api;
    private readonly IDisposable? _mirror;
    private readonly DirectoryInfo? _serviceAccount;

    private ClusterClients(IReadOnlyList<GreeterTarget> replicas, SimulatedKubernetesApi? api, IDisposable? mirror, DirectoryInfo? serviceAccount)
    {
        Replicas = replicas;
        _api = api;
        _mirror = mirror;
        _serviceAccount = serviceAccount;
    }

    public IReadOnlyList<GreeterTarget> Replicas { get; }

    /// <param name="thumbprint">When set, the pods serve TLS with this certificate, and clients accept exactly it.</param>
    /// <param name="connectionAge">MaxConnectionAge of the AddConnectionRefresh strategies.</param>
    public static async Task<ClusterClients> CreateAsync(Strategy strategy, SimulatedCluster cluster, int replicas, string? thumbprint, TimeSpan connectionAge)
    {
        if (strategy != Strategy.KubernetesResolver)
        {
            var address = thumbprint is null ? cluster.Address : new UriBuilder(cluster.Address) { Scheme = Uri.UriSchemeHttps }.Uri;
            return new ClusterClients(
                [.. Enumerable.Range(0, replicas).Select(_ => GreeterTarget.Create(strategy, address, thumbprint, o => o.MaxConnectionAge = connectionAge))],
                api: null, mirror: null, serviceAccount: null);
        }

        var api = await SimulatedKubernetesApi.StartAsync(Token).ConfigureAwait(false);
        var mirror = api.MirrorEndpoints(cluster, "greeter", "default", "grpc");
        var serviceAccount = Directory.CreateTempSubdirectory("connectionrefresh-bench-sa-");
        await File.WriteAllTextAsync(Path.Combine(serviceAccount.FullName, "token"), Token).ConfigureAwait(false);
        return new ClusterClients(
            [.. Enumerable.Range(0, replicas).Select(_ => ResolverClient(api.Url, serviceAccount.FullName, thumbprint))],
            api, mirror, serviceAccount);
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var replica in Replicas)
        {
            await replica.DisposeAsync().ConfigureAwait(false);
        }

        _mirror?.Dispose();
        if (_api is not null)
        {
            await _api.DisposeAsync().ConfigureAwait(false);
        }

        _serviceAccount?.Delete(recursive: true);
    }

    // What src/ConnectionRefresh.Kubernetes/README.md shows, plus the benchmark's certificate check for TLS.
    private static ServiceProviderTarget ResolverClient(Uri apiServer, string serviceAccountPath, string? thumbprint)
    {
        var services = new ServiceCollection();
        services.AddKubernetesResolver(o =>
        {
            o.ApiServer = apiServer;
            o.ServiceAccountPath = serviceAccountPath;
        });
        services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = new Uri("kubernetes:///greeter.default:grpc"))
            .ConfigureChannel(o =>
            {
                o.Credentials = thumbprint is null ? ChannelCredentials.Insecure : ChannelCredentials.SecureSsl;
                o.ServiceConfig = new ServiceConfig { LoadBalancingConfigs = { new RoundRobinConfig() } };
            })
            .ConfigurePrimaryHttpMessageHandler((handler, _) => GreeterTarget.AcceptCertificate((SocketsHttpHandler)handler, thumbprint));
        return new ServiceProviderTarget(services.BuildServiceProvider());
    }
}
