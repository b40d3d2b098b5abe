using System.Collections.Concurrent;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Grpc.Core;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>
/// Makes unary calls without pause on a few workers and counts replies per pod, so a test can watch the
/// traffic move while it changes the cluster. Stops on dispose or after <see cref="MaxCallsPerWorker"/> calls per worker;
/// every call has a deadline, so nothing hangs.
/// </summary>
internal sealed class CallLoop : IAsyncDisposable
{
    private const int MaxCallsPerWorker = 200_000;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task[] _workers;
    private ConcurrentDictionary<string, long> _window = new();
    private long _windowTotal;

    public CallLoop(Greeter.GreeterClient client, int workers = 4)
    {
        _workers = Enumerable.Range(0, workers).Select(_ => Task.Run(() => RunAsync(client))).ToArray();
    }

    public ConcurrentDictionary<string, long> Total { get; } = new();

    public ConcurrentQueue<Exception> Failures { get; } = new();

    public long Succeeded => Total.Values.Sum();

    /// <summary>Per-pod counts since the last <see cref="StartWindow"/>.</summary>
    public IReadOnlyDictionary<string, long> Window => _window;

    public long WindowTotal => Interlocked.Read(ref _windowTotal);

    public void StartWindow()
    {
        _window = new ConcurrentDictionary<string, long>();
        Interlocked.Exchange(ref _windowTotal, 0);
    }

    /// <summary>Waits for <paramref name="calls"/> more successful calls, or the first failure.</summary>
    public Task WaitForCallsAsync(int calls)
    {
        var target = Succeeded + calls;
        return Poll.UntilAsync(() => Succeeded >= target || !Failures.IsEmpty, $"{calls} more calls");
    }

    /// <summary>Waits until <paramref name="pod"/> served nothing during <paramref name="calls"/> successful calls in a row.</summary>
    public Task WaitForQuietAsync(SimulatedPod pod, int calls)
    {
        var served = pod.CallsServed;
        var from = Succeeded;
        return Poll.UntilAsync(() =>
        {
            if (pod.CallsServed != served)
            {
                (served, from) = (pod.CallsServed, Succeeded);
                return false;
            }

            return Succeeded - from >= calls;
        }, $"{calls} calls in a row without {pod.Name}");
    }

    /// <summary>Waits for a window of <paramref name="calls"/> calls in which <paramref name="pod"/> got none.</summary>
    public async Task WaitForWindowWithoutAsync(string pod, int calls, TimeSpan? timeout = null)
    {
        StartWindow();
        await Poll.UntilAsync(() =>
        {
            if (Window.ContainsKey(pod))
            {
                StartWindow();
                return false;
            }

            return WindowTotal >= calls;
        }, $"a window of {calls} calls without {pod}", timeout);
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        await Task.WhenAll(_workers);
        _stop.Dispose();
    }

    private async Task RunAsync(Greeter.GreeterClient client)
    {
        for (var i = 0; i < MaxCallsPerWorker && !_stop.IsCancellationRequested; i++)
        {
            try
            {
                var reply = await client.SayHelloAsync(new HelloRequest { Name = "loop" }, deadline: DateTime.UtcNow.AddSeconds(30), cancellationToken: _stop.Token);
                Total.AddOrUpdate(reply.Instance, 1, (_, n) => n + 1);
                _window.AddOrUpdate(reply.Instance, 1, (_, n) => n + 1);
                Interlocked.Increment(ref _windowTotal);
            }
            catch (RpcException ex) when (ex.StatusCode == StatusCode.Cancelled && _stop.IsCancellationRequested)
            {
                return;
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex)
            {
                Failures.Enqueue(ex);
            }
        }
    }
}
