using ConnectionRefresh.Protos;
using Grpc.Core;

namespace ConnectionRefresh.Server.Tests.TestSupport;

/// <summary>
/// The Greeter for integration tests. <c>StreamHellos</c> with the name <c>until-closing</c>, and <c>Chat</c> whose first
/// request has that name, end their streams cleanly when their connection starts closing (what a well-behaved long
/// stream does); any other name ignores it.
/// </summary>
internal sealed class TestGreeterService(GreeterProbe probe) : Greeter.GreeterBase
{
    public const string UntilClosing = "until-closing";

    public override async Task<HelloReply> SayHello(HelloRequest request, ServerCallContext context)
    {
        if (request.DelayMs > 0)
        {
            await Task.Delay(request.DelayMs, context.CancellationToken);
        }

        probe.CallServed();
        return new HelloReply { Message = "Hello " + request.Name, Instance = probe.Instance };
    }

    public override async Task StreamHellos(StreamRequest request, IServerStreamWriter<HelloReply> responseStream, ServerCallContext context)
    {
        var feature = context.GetConnectionClosingFeature();
        if (feature is null)
        {
            probe.FeatureMissing = true;
        }

        var closing = context.GetConnectionClosingToken();
        var sequence = 0;
        using var registration = closing.Register(() =>
        {
            probe.GracePeriodAtClosing = feature?.GracePeriod;
            probe.ClosingObserved.TrySetResult(Volatile.Read(ref sequence));
        });
        for (; sequence < request.Count; sequence++)
        {
            if (request.Name == UntilClosing && closing.IsCancellationRequested)
            {
                break;
            }

            await responseStream.WriteAsync(new HelloReply { Message = "Hello " + request.Name, Instance = probe.Instance, Sequence = sequence });
            if (request.DelayMs > 0)
            {
                await Task.Delay(request.DelayMs, context.CancellationToken);
            }
        }

        probe.CallServed();
    }

    public override async Task<HelloSummary> CollectHellos(IAsyncStreamReader<HelloRequest> requestStream, ServerCallContext context)
    {
        var count = 0;
        await foreach (var _ in requestStream.ReadAllAsync(context.CancellationToken))
        {
            count++;
        }

        probe.CallServed();
        return new HelloSummary { Count = count, Instance = probe.Instance };
    }

    public override async Task Chat(IAsyncStreamReader<HelloRequest> requestStream, IServerStreamWriter<HelloReply> responseStream, ServerCallContext context)
    {
        // A chat whose first request is named until-closing follows src/ConnectionRefresh.Server/README.md: once it knows, it reads with a token
        // linked to the connection's closing token, and ends with status OK when that fires.
        var feature = context.GetConnectionClosingFeature();
        var closing = context.GetConnectionClosingToken();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken, closing);
        var untilClosing = false;
        var sequence = 0;
        using var registration = closing.Register(() =>
        {
            probe.GracePeriodAtClosing = feature?.GracePeriod;
            probe.ClosingObserved.TrySetResult(Volatile.Read(ref sequence));
        });
        try
        {
            while (await requestStream.MoveNext(untilClosing ? stop.Token : context.CancellationToken))
            {
                untilClosing |= sequence == 0 && requestStream.Current.Name == UntilClosing;
                await responseStream.WriteAsync(new HelloReply { Message = "Hello " + requestStream.Current.Name, Instance = probe.Instance, Sequence = sequence++ });
            }
        }
        catch (OperationCanceledException) when (untilClosing && closing.IsCancellationRequested && !context.CancellationToken.IsCancellationRequested)
        {
            // The connection is closing: the chat ends cleanly; its client would open a new one, on a new connection.
        }

        probe.CallServed();
    }
}
