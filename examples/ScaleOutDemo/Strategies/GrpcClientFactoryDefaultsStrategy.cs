using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace ScaleOutDemo.Strategies;

/// <summary>What most services do: <c>AddGrpcClient</c> with its defaults, the client resolved once and kept.</summary>
internal sealed class GrpcClientFactoryDefaultsStrategy : IClientStrategy
{
    public string Name => "defaults";

    public string Description => "AddGrpcClient<T>() defaults: one channel, one HTTP/2 connection, kept";

    public IClientReplica CreateReplica(SimulatedCluster cluster)
    {
        var services = new ServiceCollection();
        services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = cluster.Address);
        var provider = services.BuildServiceProvider();
        return new GreeterClientReplica(provider.GetRequiredService<Greeter.GreeterClient>(), provider);
    }
}
