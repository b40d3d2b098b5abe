using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Grpc.Core;
using Grpc.Net.Client;

namespace ScaleOutDemo.Strategies;

/// <summary>The common workaround: a new channel, so a new TCP connection and HTTP/2 handshake, for every call.</summary>
internal sealed class NewConnectionPerCallStrategy : IClientStrategy
{
    public string Name => "per-call";

    public string Description => "new GrpcChannel (new TCP + HTTP/2 connection) for every call";

    public IClientReplica CreateReplica(SimulatedCluster cluster) => new Replica(cluster.Address);

    private sealed class Replica(Uri address) : IClientReplica
    {
        public async Task<HelloReply> SayHelloAsync(HelloRequest request, CallOptions options)
        {
            using var channel = GrpcChannel.ForAddress(address);
            return await new Greeter.GreeterClient(channel).SayHelloAsync(request, options);
        }

        public void Dispose()
        {
        }
    }
}
