using System.Collections.Concurrent;
using System.Diagnostics;
using ConnectionRefresh.Protos;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;

namespace ConnectionRefresh.Tests.Scenarios;

/// <summary>One client pod for scenarios: its own service provider and one Greeter client resolved once and kept.</summary>
internal sealed class ScenarioClient : IDisposable
{
    private readonly ServiceProvider _provider;

    public ScenarioClient(Uri address, Action<ConnectionRefreshOptions>? refresh)
    {
        var services = new ServiceCollection();
        var builder = services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = address);
        if (refresh is not null)
        {
            builder.AddConnectionRefresh(refresh);
        }

        _provider = services.BuildServiceProvider();
        Greeter = _provider.GetRequiredService<Greeter.GreeterClient>();
    }

    public Greeter.GreeterClient Greeter { get; }

    public void Dispose() => _provider.Dispose();
}

/// <summary>One finished call: which client made it, when it started and ended (seconds on the load's clock), who served it or why it failed.</summary>
internal sealed record CallRecord(int Client, double Started, double Ended, string? Instance, RpcException? Error);

/// <summary>
/// A bounded load: <c>workers</c> callers per client, each calling in a loop until stopped, at most
/// <see cref="MaxCallsPerWorker"/> calls and <see cref="MaxDuration"/>. Thread-safe: records go to a concurrent queue.
/// </summary>
internal sealed class ScenarioLoad : IAsyncDisposable
{
    public const int MaxCallsPerWorker = 100_000;
    public static readonly TimeSpan MaxDuration = TimeSpan.FromMinutes(2);

    private readonly CancellationTokenSource _stop = new(MaxDuration);
    private readonly List<Task> _workers;

    private ScenarioLoad(IReadOnlyList<ScenarioClient> clients, int workers, int delayMs, TimeSpan callDeadline)
    {
        _workers = [.. clients.SelectMany((c, i) => Enumerable.Range(0, workers).Select(_ => Task.Run(() => WorkerAsync(c, i, delayMs, callDeadline))))];
    }

    public Stopwatch Clock { get; } = Stopwatch.StartNew();

    public ConcurrentQueue<CallRecord> Calls { get; } = new();

    public double Now => Clock.Elapsed.TotalSeconds;

    public static ScenarioLoad Start(IReadOnlyList<ScenarioClient> clients, int workers, int delayMs, TimeSpan callDeadline) =>
        new(clients, workers, delayMs, callDeadline);

    public IReadOnlyList<CallRecord> Failures => [.. Calls.Where(c => c.Error is not null)];

    public double ShareOf(IEnumerable<string> instances, double from, double to)
    {
        var set = instances.ToHashSet();
        var window = Calls.Where(c => c.Error is null && c.Ended >= from && c.Ended < to).ToList();
        return window.Count == 0 ? 0 : window.Count(c => set.Contains(c.Instance!)) / (double)window.Count;
    }

    public async Task StopAsync()
    {
        await _stop.CancelAsync();
        await Task.WhenAll(_workers);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        _stop.Dispose();
    }

    private async Task WorkerAsync(ScenarioClient client, int clientIndex, int delayMs, TimeSpan callDeadline)
    {
        var request = new HelloRequest { Name = "scenario", DelayMs = delayMs };
        for (var i = 0; i < MaxCallsPerWorker && !_stop.IsCancellationRequested; i++)
        {
            var started = Now;
            try
            {
                var reply = await client.Greeter.SayHelloAsync(request, new CallOptions(deadline: DateTime.UtcNow + callDeadline, cancellationToken: _stop.Token));
                Calls.Enqueue(new CallRecord(clientIndex, started, Now, reply.Instance, null));
            }
            catch (RpcException) when (_stop.IsCancellationRequested)
            {
                return; // Cut by the end of the load: not a failure of the scenario.
            }
            catch (RpcException ex)
            {
                Calls.Enqueue(new CallRecord(clientIndex, started, Now, null, ex));
                // A caller's retry back-off (load pacing, not synchronisation): a failing loop must not spin.
                await Task.Delay(10);
            }
        }
    }
}
