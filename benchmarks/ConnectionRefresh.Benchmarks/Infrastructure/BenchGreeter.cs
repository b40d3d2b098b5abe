using ConnectionRefresh.Protos;
using Grpc.Core;

namespace ConnectionRefresh.Benchmarks.Infrastructure;

/// <summary>The benchmark server's Greeter: answers at once, with a constant reply, so the client's cost dominates.</summary>
internal sealed class BenchGreeter : Greeter.GreeterBase
{
    private static readonly Task<HelloReply> Reply = Task.FromResult(new HelloReply { Message = "Hello", Instance = "bench" });

    public override Task<HelloReply> SayHello(HelloRequest request, ServerCallContext context) => Reply;
}
