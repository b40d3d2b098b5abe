using ConnectionRefresh.Protos;
using Grpc.Core;

namespace ScaleOutDemo.Strategies;

/// <summary>
/// One way for a client service to call the Greeter behind a ClusterIP. Adding a strategy to the demo means writing one
/// small class that implements this and listing it in <see cref="StrategyCatalog"/>.
/// </summary>
internal interface IClientStrategy
{
    /// <summary>Short name used on the command line (<c>--strategies</c>), in the table, the chart and the JSON.</summary>
    string Name { get; }

    /// <summary>One line: what the strategy does.</summary>
    string Description { get; }

    /// <summary>Creates one client replica (one client pod): its own connections, held until disposed.</summary>
    IClientReplica CreateReplica(Uri clusterAddress);
}

/// <summary>One client pod's view of the Greeter.</summary>
internal interface IClientReplica : IDisposable
{
    Task<HelloReply> SayHelloAsync(HelloRequest request, CallOptions options);
}

/// <summary>A replica that calls through one long-lived generated client (the usual way).</summary>
internal sealed class GreeterClientReplica(Greeter.GreeterClient client, IDisposable owner) : IClientReplica
{
    public Task<HelloReply> SayHelloAsync(HelloRequest request, CallOptions options) =>
        client.SayHelloAsync(request, options).ResponseAsync;

    public void Dispose() => owner.Dispose();
}
