using ConnectionRefresh;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace ScaleOutDemo.Strategies;

/// <summary>
/// <c>AddGrpcClient&lt;T&gt;().AddConnectionRefresh(...)</c>. The demo compresses time so the story fits in a minute: a
/// connection age of 5 s stands for the 2-minute default, and keepalive pings after 2 s of silence (1 s timeout) stand for
/// the 15–30 s a user would choose against Kestrel servers.
/// </summary>
internal sealed class ConnectionRefreshStrategy(string name, string description, Action<ConnectionRefreshOptions>? configure = null) : IClientStrategy
{
    public string Name => name;

    public string Description => description;

    /// <summary>The library defaults with time scaled for the demo.</summary>
    public static void DemoScale(ConnectionRefreshOptions options)
    {
        options.MaxConnectionAge = TimeSpan.FromSeconds(5);
        options.KeepAlivePingDelay = TimeSpan.FromSeconds(2);
        options.KeepAlivePingTimeout = TimeSpan.FromSeconds(1);
    }

    public IClientReplica CreateReplica(SimulatedCluster cluster)
    {
        var services = new ServiceCollection();
        services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = cluster.Address)
            .AddConnectionRefresh(options =>
            {
                DemoScale(options);
                configure?.Invoke(options);
            });
        var provider = services.BuildServiceProvider();
        return new GreeterClientReplica(provider.GetRequiredService<Greeter.GreeterClient>(), provider);
    }
}
