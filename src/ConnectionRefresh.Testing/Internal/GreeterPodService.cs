using ConnectionRefresh.Protos;
using Grpc.Core;

namespace ConnectionRefresh.Testing.Internal;

/// <summary>The pods' Greeter: every reply names the pod; <c>delay_ms</c> and <c>count</c> are honoured. Stateless.</summary>
internal sealed class GreeterPodService(SimulatedPod pod, PodClock clock) : Greeter.GreeterBase
{
    private const int MaxDelayMs = 3_600_000;
    private const int MaxCount = 1_000_000;

    public override async Task<HelloReply> SayHello(HelloRequest request, ServerCallContext context)
    {
        await DelayAsync(request.DelayMs, context.CancellationToken).ConfigureAwait(false);
        return Reply(request.Name, 0);
    }

    public override async Task StreamHellos(StreamRequest request, IServerStreamWriter<HelloReply> responseStream, ServerCallContext context)
    {
        var count = Math.Clamp(request.Count, 0, MaxCount);
        for (var i = 0; i < count; i++)
        {
            if (i > 0)
            {
                await DelayAsync(request.DelayMs, context.CancellationToken).ConfigureAwait(false);
            }

            await responseStream.WriteAsync(Reply(request.Name, i), context.CancellationToken).ConfigureAwait(false);
        }
    }

    public override async Task<HelloSummary> CollectHellos(IAsyncStreamReader<HelloRequest> requestStream, ServerCallContext context)
    {
        var count = 0;
        while (await requestStream.MoveNext(context.CancellationToken).ConfigureAwait(false))
        {
            await DelayAsync(requestStream.Current.DelayMs, context.CancellationToken).ConfigureAwait(false);
            count++;
        }

        return new HelloSummary { Count = count, Instance = pod.Name };
    }

    public override async Task Chat(IAsyncStreamReader<HelloRequest> requestStream, IServerStreamWriter<HelloReply> responseStream, ServerCallContext context)
    {
        var sequence = 0;
        while (await requestStream.MoveNext(context.CancellationToken).ConfigureAwait(false))
        {
            var request = requestStream.Current;
            await DelayAsync(request.DelayMs, context.CancellationToken).ConfigureAwait(false);
            await responseStream.WriteAsync(Reply(request.Name, sequence++), context.CancellationToken).ConfigureAwait(false);
        }
    }

    private HelloReply Reply(string name, int sequence) =>
        new() { Message = $"Hello {name}", Instance = pod.Name, Sequence = sequence };

    private Task DelayAsync(int delayMs, CancellationToken cancellationToken) =>
        delayMs <= 0
            ? Task.CompletedTask
            : Task.Delay(TimeSpan.FromMilliseconds(Math.Min(delayMs, MaxDelayMs)), clock.TimeProvider, cancellationToken);
}
