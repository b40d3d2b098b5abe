using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
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

    /// <summary>
    /// Adjusts the strategy's cluster before it starts, for strategies that need the server side too (e.g. a server-side
    /// max connection age through <see cref="SimulatedClusterOptions.ConfigureListen"/>). Default: nothing.
    /// </summary>
    void ConfigureCluster(SimulatedClusterOptions options)
    {
    }

    /// <summary>
    /// Starts what the strategy needs next to its cluster (e.g. a Kubernetes API server that mirrors the pods), once per
    /// run, after the cluster started and before the replicas are created. The result is disposed after the replicas and
    /// before the cluster. Default: nothing.
    /// </summary>
    Task<IAsyncDisposable?> StartEnvironmentAsync(SimulatedCluster cluster) => Task.FromResult<IAsyncDisposable?>(null);

    /// <summary>
    /// Creates one client replica (one client pod): its own connections, held until disposed. Most strategies only need
    /// <see cref="SimulatedCluster.Address"/> (the ClusterIP); the cluster is there for those that resolve pods themselves.
    /// </summary>
    IClientReplica CreateReplica(SimulatedCluster cluster);
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
