using ConnectionRefresh.Protos;
using ConnectionRefresh.Server;
using Grpc.Core;

namespace Greeter.Server;

/// <summary>
/// The Greeter of <c>protos/greeter.proto</c>. Every reply names this instance (the pod), so clients and the demo can
/// see which backend answered.
/// </summary>
internal sealed partial class GreeterService(InstanceName instance, ILogger<GreeterService> logger) : ConnectionRefresh.Protos.Greeter.GreeterBase
{
    public override async Task<HelloReply> SayHello(HelloRequest request, ServerCallContext context)
    {
        await DelayAsync(request.DelayMs, context.CancellationToken);
        return new HelloReply { Message = $"Hello {request.Name}", Instance = instance.Value };
    }

    public override async Task StreamHellos(StreamRequest request, IServerStreamWriter<HelloReply> responseStream, ServerCallContext context)
    {
        // A bounded stream: it keeps going when the connection starts closing, and MaxConnectionAgeGrace is meant
        // to be long enough for it to finish.
        using var closing = context.GetConnectionClosingToken().Register(() => LogConnectionClosing(logger, nameof(StreamHellos)));
        for (var i = 0; i < request.Count; i++)
        {
            await responseStream.WriteAsync(new HelloReply { Message = $"Hello {request.Name}", Instance = instance.Value, Sequence = i });
            await DelayAsync(request.DelayMs, context.CancellationToken);
        }
    }

    public override async Task<HelloSummary> CollectHellos(IAsyncStreamReader<HelloRequest> requestStream, ServerCallContext context)
    {
        var count = 0;
        await foreach (var _ in requestStream.ReadAllAsync(context.CancellationToken))
        {
            count++;
        }

        return new HelloSummary { Count = count, Instance = instance.Value };
    }

    public override async Task Chat(IAsyncStreamReader<HelloRequest> requestStream, IServerStreamWriter<HelloReply> responseStream, ServerCallContext context)
    {
        // An open-ended stream: when the server starts closing this connection (MaxConnectionAge, MaxConnectionIdle, or
        // the server shutting down), the chat ends cleanly with status OK and the trailer "connection-closing: true", so
        // that the client opens a new chat, which goes over a new connection, instead of being cut when the grace period
        // (or the shutdown timeout) ends.
        var closing = context.GetConnectionClosingToken();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken, closing);
        var sequence = 0;
        try
        {
            await foreach (var request in requestStream.ReadAllAsync(stop.Token))
            {
                await DelayAsync(request.DelayMs, stop.Token);
                await responseStream.WriteAsync(new HelloReply { Message = $"Hello {request.Name}", Instance = instance.Value, Sequence = sequence++ });
            }
        }
        catch (OperationCanceledException) when (closing.IsCancellationRequested && !context.CancellationToken.IsCancellationRequested)
        {
            LogConnectionClosing(logger, nameof(Chat));
            context.ResponseTrailers.Add("connection-closing", "true");
        }
    }

    private static Task DelayAsync(int milliseconds, CancellationToken cancellationToken) =>
        milliseconds > 0 ? Task.Delay(milliseconds, cancellationToken) : Task.CompletedTask;

    [LoggerMessage(EventId = 1, Level = LogLevel.Information, Message = "The connection of a {Method} call started closing (max connection age or idleness, or server shutdown).")]
    private static partial void LogConnectionClosing(ILogger logger, string method);
}
