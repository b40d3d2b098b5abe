using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>
/// Fake API server + real Greeter pods + a client built the way src/ConnectionRefresh.Kubernetes/README.md shows
/// (<c>AddKubernetesResolver</c>, <c>AddGrpcClient</c> with <c>kubernetes:///greeter.default:grpc</c>, round_robin).
/// </summary>
internal sealed class ResolverTestCluster : IAsyncDisposable
{
    public const string Service = "greeter";
    public const string Namespace = "default";

    private readonly ResolverClient _client;

    private ResolverTestCluster(SimulatedKubernetesApi api, GreeterPods pods, ServiceAccountDirectory account, ResolverClient client)
    {
        Api = api;
        Pods = pods;
        Account = account;
        _client = client;
    }

    public SimulatedKubernetesApi Api { get; }

    public GreeterPods Pods { get; }

    public ServiceAccountDirectory Account { get; }

    public ServiceProvider Services => _client.Services;

    public Greeter.GreeterClient Client => _client.Client;

    /// <summary>Starts <paramref name="podCount"/> pods; none is in a slice yet.</summary>
    public static async Task<ResolverTestCluster> StartAsync(int podCount, string target = "kubernetes:///greeter.default:grpc", Action<KubernetesResolverOptions>? configure = null,
        Action<IServiceCollection>? configureServices = null)
    {
        var account = new ServiceAccountDirectory("token-1");
        var api = await SimulatedKubernetesApi.StartAsync("token-1");
        var pods = await GreeterPods.StartAsync(podCount);
        var client = ResolverClient.Create(api.Url, account.Path, target, configure, services =>
        {
            services.AddMetrics();
            configureServices?.Invoke(services);
        });
        return new ResolverTestCluster(api, pods, account, client);
    }

    /// <summary>
    /// The Service's EndpointSlice <paramref name="slice"/> lists <paramref name="ips"/> as ready on the pods' port, as the
    /// EndpointSlice controller writes it (replacing what that slice listed before).
    /// </summary>
    public void PublishReady(IEnumerable<string> ips, string slice = "greeter-a") => Api.Apply(Namespace, Slices.Ready(slice, Service, ips, Pods.Port));

    public MetricCollector<T> Collect<T>(string instrument)
        where T : struct =>
        new(Services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>(), "ConnectionRefresh.Kubernetes", instrument);

    public async ValueTask DisposeAsync()
    {
        await _client.DisposeAsync();
        await Api.DisposeAsync();
        await Pods.DisposeAsync();
        Account.Dispose();
    }
}
