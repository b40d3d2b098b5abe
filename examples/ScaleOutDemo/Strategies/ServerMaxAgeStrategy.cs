using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;

namespace ScaleOutDemo.Strategies;

/// <summary>
/// Plain <c>AddGrpcClient&lt;T&gt;()</c> clients, nothing changed on the client; the pods close every connection after a
/// maximum age with ConnectionRefresh.Server (GOAWAY, ±10 % jitter, running calls finish), so the clients reconnect through
/// the ClusterIP and are re-balanced. Time is scaled like <see cref="ConnectionRefreshStrategy.DemoScale"/>: an age of 5 s
/// stands for the minutes a server would use. The clients have no keepalive, as clients the server's owner does not control.
/// </summary>
internal sealed class ServerMaxAgeStrategy : IClientStrategy
{
    public string Name => "server-max-age";

    public string Description => "AddGrpcClient<T>() defaults; pods close connections at age 5 s ±10 % (AddServerConnectionAge)";

    public void ConfigureCluster(SimulatedClusterOptions options)
    {
        options.ConfigureServices = services => services.AddServerConnectionAge(o =>
        {
            o.MaxConnectionAge = TimeSpan.FromSeconds(5);
            o.MaxConnectionAgeGrace = TimeSpan.FromSeconds(5);
        });
        options.ConfigureListen = listen => listen.UseServerConnectionAge();
    }

    public IClientReplica CreateReplica(SimulatedCluster cluster)
    {
        var services = new ServiceCollection();
        services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = cluster.Address);
        var provider = services.BuildServiceProvider();
        return new GreeterClientReplica(provider.GetRequiredService<Greeter.GreeterClient>(), provider);
    }
}
