using System.Collections.Concurrent;
using ConnectionRefresh.Kubernetes;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Grpc.Core;
using Grpc.Net.Client.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace ScaleOutDemo.Strategies;

/// <summary>
/// Per-call balancing: <c>AddKubernetesResolver()</c> + <c>kubernetes:///greeter.default:grpc</c> + <c>round_robin</c>, each
/// client replica watching the EndpointSlices of a <see cref="SimulatedKubernetesApi"/> that mirrors this strategy's
/// cluster (one connection per ready pod per replica). A black-holed pod stays ready until the script takes it out of the
/// endpoints, so the subchannel connections get HTTP/2 keepalive pings, demo-scaled like the refresh strategies (2 s of
/// silence, 1 s timeout): a dead connection is dropped and round_robin skips that pod while it cannot reconnect.
/// </summary>
internal sealed class KubernetesResolverStrategy : IClientStrategy
{
    private const string Token = "demo-token";
    private readonly ConcurrentDictionary<SimulatedCluster, Environment> _environments = new();

    public string Name => "k8s-resolver";

    public string Description => "AddKubernetesResolver() + round_robin over the mirrored EndpointSlices, keepalive 2 s + 1 s";

    public async Task<IAsyncDisposable?> StartEnvironmentAsync(SimulatedCluster cluster)
    {
        var api = await SimulatedKubernetesApi.StartAsync(Token);
        var environment = new Environment(this, cluster, api, api.MirrorEndpoints(cluster, "greeter", "default", "grpc"));
        _environments[cluster] = environment;
        return environment;
    }

    public IClientReplica CreateReplica(SimulatedCluster cluster)
    {
        var environment = _environments[cluster];
        var services = new ServiceCollection();
        services.AddKubernetesResolver(o =>
        {
            o.ApiServer = environment.Api.Url;
            o.ServiceAccountPath = environment.ServiceAccountPath;
        });
        services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = new Uri("kubernetes:///greeter.default:grpc"))
            .ConfigureChannel(o =>
            {
                o.Credentials = ChannelCredentials.Insecure;
                o.ServiceConfig = new ServiceConfig { LoadBalancingConfigs = { new RoundRobinConfig() } };
            })
            .ConfigurePrimaryHttpMessageHandler((handler, _) =>
            {
                // Configure the factory's SocketsHttpHandler in place (replacing it would switch grpc-dotnet's balancer off).
                var sockets = (SocketsHttpHandler)handler;
                sockets.KeepAlivePingDelay = TimeSpan.FromSeconds(2);
                sockets.KeepAlivePingTimeout = TimeSpan.FromSeconds(1);
            });
        var provider = services.BuildServiceProvider();
        return new GreeterClientReplica(provider.GetRequiredService<Greeter.GreeterClient>(), provider);
    }

    /// <summary>The API server, its mirror of the cluster and a service account directory with the token.</summary>
    private sealed class Environment : IAsyncDisposable
    {
        private readonly KubernetesResolverStrategy _owner;
        private readonly SimulatedCluster _cluster;
        private readonly IDisposable _mirror;

        public Environment(KubernetesResolverStrategy owner, SimulatedCluster cluster, SimulatedKubernetesApi api, IDisposable mirror)
        {
            _owner = owner;
            _cluster = cluster;
            _mirror = mirror;
            Api = api;
            ServiceAccountPath = Directory.CreateTempSubdirectory("scaleoutdemo-sa-").FullName;
            File.WriteAllText(Path.Combine(ServiceAccountPath, "token"), Token);
        }

        public SimulatedKubernetesApi Api { get; }

        public string ServiceAccountPath { get; }

        public async ValueTask DisposeAsync()
        {
            _owner._environments.TryRemove(_cluster, out _);
            _mirror.Dispose();
            await Api.DisposeAsync();
            Directory.Delete(ServiceAccountPath, recursive: true);
        }
    }
}
