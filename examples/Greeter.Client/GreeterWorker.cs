using ConnectionRefresh.Protos;
using Grpc.Core;

namespace Greeter.Client;

/// <summary>Calls the Greeter once per interval and logs which pod answered, a bounded number of times.</summary>
internal sealed partial class GreeterWorker(
    ConnectionRefresh.Protos.Greeter.GreeterClient client,
    IConfiguration configuration,
    IHostApplicationLifetime lifetime,
    ILogger<GreeterWorker> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var calls = configuration.GetValue("Greeter:Calls", 60);
        var interval = configuration.GetValue("Greeter:Interval", TimeSpan.FromSeconds(1));
        for (var i = 0; i < calls && !stoppingToken.IsCancellationRequested; i++)
        {
            try
            {
                var reply = await client.SayHelloAsync(new HelloRequest { Name = "worker" }, deadline: DateTime.UtcNow.AddSeconds(5), cancellationToken: stoppingToken);
                LogReply(logger, i + 1, reply.Instance);
            }
            catch (RpcException exception)
            {
                LogFailure(logger, i + 1, exception.StatusCode);
            }

            await Task.Delay(interval, stoppingToken);
        }

        lifetime.StopApplication();
    }

    [LoggerMessage(1, LogLevel.Information, "Call {Number} answered by {Instance}")]
    private static partial void LogReply(ILogger logger, int number, string instance);

    [LoggerMessage(2, LogLevel.Warning, "Call {Number} failed: {Status}")]
    private static partial void LogFailure(ILogger logger, int number, StatusCode status);
}
