using ConnectionRefresh.Protos;
using Microsoft.Extensions.DependencyInjection;

namespace ScaleOutDemo.Strategies;

/// <summary>What most services do: <c>AddGrpcClient</c> with its defaults, the client resolved once and kept.</summary>
internal sealed class GrpcClientFactoryDefaultsStrategy : IClientStrategy
{
    public string Name => "defaults";

    public string Description => "AddGrpcClient<T>() defaults: one channel, one HTTP/2 connection, kept";

    public IClientReplica CreateReplica(Uri clusterAddress)
    {
        var services = new ServiceCollection();
        services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = clusterAddress);
        var provider = services.BuildServiceProvider();
        return new GreeterClientReplica(provider.GetRequiredService<Greeter.GreeterClient>(), provider);
    }
}
