using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Grpc.Core;
using Grpc.Net.Client.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>
/// Fake API server + real Greeter pods + a client built the way the README shows
/// (<c>AddKubernetesResolver</c>, <c>AddGrpcClient</c> with <c>kubernetes:///greeter.default:grpc</c>, round_robin).
/// </summary>
internal sealed class ResolverTestCluster : IAsyncDisposable
{
    public const string Service = "greeter";
    public const string Namespace = "default";

    private ResolverTestCluster(SimulatedKubernetesApi api, GreeterPods pods, ServiceAccountDirectory account, ServiceProvider services)
    {
        Api = api;
        Pods = pods;
        Account = account;
        Services = services;
        Client = services.GetRequiredService<Greeter.GreeterClient>();
    }

    public SimulatedKubernetesApi Api { get; }

    public GreeterPods Pods { get; }

    public ServiceAccountDirectory Account { get; }

    public ServiceProvider Services { get; }

    public Greeter.GreeterClient Client { get; }

    /// <summary>Starts <paramref name="podCount"/> pods; none is in a slice yet.</summary>
    public static async Task<ResolverTestCluster> StartAsync(int podCount, string target = "kubernetes:///greeter.default:grpc", Action<KubernetesResolverOptions>? configure = null,
        Action<IServiceCollection>? configureServices = null)
    {
        var account = new ServiceAccountDirectory("token-1");
        var api = await SimulatedKubernetesApi.StartAsync("token-1");
        var pods = await GreeterPods.StartAsync(podCount);
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddMetrics();
        services.AddKubernetesResolver(options =>
        {
            options.ApiServer = api.Url;
            options.ServiceAccountPath = account.Path;
            options.InitialBackoff = TimeSpan.FromMilliseconds(50);
            options.MaxBackoff = TimeSpan.FromMilliseconds(500);
            configure?.Invoke(options);
        });
        services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = new Uri(target))
            .ConfigureChannel(o =>
            {
                o.Credentials = ChannelCredentials.Insecure;
                o.ServiceConfig = new ServiceConfig { LoadBalancingConfigs = { new RoundRobinConfig() } };
            });
        configureServices?.Invoke(services);
        return new ResolverTestCluster(api, pods, account, services.BuildServiceProvider(validateScopes: true));
    }

    public MetricCollector<T> Collect<T>(string instrument)
        where T : struct =>
        new(Services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>(), "ConnectionRefresh.Kubernetes", instrument);

    public async ValueTask DisposeAsync()
    {
        await Services.DisposeAsync();
        await Api.DisposeAsync();
        await Pods.DisposeAsync();
        Account.Dispose();
    }
}
