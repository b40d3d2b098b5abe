using ConnectionRefresh.Protos;
using Grpc.Core;
using Grpc.Net.Client.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>
/// A Greeter client registered the way src/ConnectionRefresh.Kubernetes/README.md shows, against a fake API server: <c>AddKubernetesResolver</c> and
/// <c>AddGrpcClient</c> on a <c>kubernetes:///</c> target, plaintext HTTP/2 to the fake pods, with round_robin named in the channel's
/// ServiceConfig (the resolver's default for a channel without one, see KubernetesResolverDefaultPolicyTests). The backoffs
/// are short so that tests see a recovery quickly. Owns the service provider (and so the channel).
/// </summary>
internal sealed class ResolverClient : IAsyncDisposable
{
    private ResolverClient(ServiceProvider services)
    {
        Services = services;
        Client = services.GetRequiredService<Greeter.GreeterClient>();
    }

    public ServiceProvider Services { get; }

    public Greeter.GreeterClient Client { get; }

    /// <param name="configure">The test's own resolver options, applied last.</param>
    /// <param name="configureServices">More registrations, added last.</param>
    /// <param name="configureClient">More configuration of the Greeter client's builder, after the README's.</param>
    public static ResolverClient Create(Uri apiServer, string serviceAccountPath, string target = "kubernetes:///greeter.default:grpc",
        Action<KubernetesResolverOptions>? configure = null, Action<IServiceCollection>? configureServices = null,
        Action<IHttpClientBuilder>? configureClient = null)
    {
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddKubernetesResolver(options =>
        {
            options.ApiServer = apiServer;
            options.ServiceAccountPath = serviceAccountPath;
            options.InitialBackoff = TimeSpan.FromMilliseconds(50);
            options.MaxBackoff = TimeSpan.FromMilliseconds(500);
            configure?.Invoke(options);
        });
        var client = services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = new Uri(target))
            .ConfigureChannel(o =>
            {
                o.Credentials = ChannelCredentials.Insecure;
                o.ServiceConfig = new ServiceConfig { LoadBalancingConfigs = { new RoundRobinConfig() } };
            });
        configureClient?.Invoke(client);
        configureServices?.Invoke(services);
        return new ResolverClient(services.BuildServiceProvider(validateScopes: true));
    }

    public ValueTask DisposeAsync() => Services.DisposeAsync();
}
