using System.Collections.Concurrent;
using System.Diagnostics;
using ConnectionRefresh.Protos;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;

namespace ConnectionRefresh.Tests.Infrastructure;

/// <summary>One client process: its own service provider with one Greeter client.</summary>
internal sealed class GreeterClientHost : IDisposable
{
    private readonly ServiceProvider _services;

    private GreeterClientHost(ServiceProvider services)
    {
        _services = services;
        Client = services.GetRequiredService<Greeter.GreeterClient>();
    }

    public Greeter.GreeterClient Client { get; }

    public IServiceProvider Services => _services;

    /// <summary>A client with AddConnectionRefresh; <paramref name="configure"/> adjusts the options.</summary>
    public static GreeterClientHost WithRefresh(Uri address, Action<ConnectionRefreshOptions>? configure = null, Action<IHttpClientBuilder>? builder = null)
        => Create(address, b =>
        {
            b.AddConnectionRefresh(o => configure?.Invoke(o));
            builder?.Invoke(b);
        });

    /// <summary>A client with AddGrpcClient defaults: the control group.</summary>
    public static GreeterClientHost Plain(Uri address) => Create(address, _ => { });

    public static GreeterClientHost Create(Uri address, Action<IHttpClientBuilder> builder, Action<IServiceCollection>? services = null)
    {
        var collection = new ServiceCollection();
        collection.AddMetrics();
        services?.Invoke(collection);
        builder(collection.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = address));
        return new GreeterClientHost(collection.BuildServiceProvider());
    }

    public void Dispose() => _services.Dispose();
}

/// <summary>Calls made by a bounded load loop: which pod served each, and what failed.</summary>
internal sealed class LoadResult
{
    public ConcurrentDictionary<string, int> ByInstance { get; } = new();

    public ConcurrentQueue<Exception> Failures { get; } = new();

    public int Succeeded => ByInstance.Values.Sum();

    public double ShareOf(IEnumerable<string> instances) =>
        Succeeded == 0 ? 0 : instances.Sum(i => ByInstance.GetValueOrDefault(i)) / (double)Succeeded;
}

internal static class Load
{
    /// <summary>
    /// Unary calls from <paramref name="concurrency"/> workers per client until <paramref name="duration"/> has
    /// passed or <paramref name="maxCalls"/> calls were made per worker: bounded in time and count.
    /// </summary>
    public static async Task<LoadResult> RunAsync(IEnumerable<Greeter.GreeterClient> clients, int concurrency, TimeSpan duration, int maxCalls = 100_000)
    {
        var result = new LoadResult();
        var clock = Stopwatch.StartNew();
        var workers = clients.SelectMany(client => Enumerable.Range(0, concurrency).Select(_ => Task.Run(async () =>
        {
            for (var i = 0; i < maxCalls && clock.Elapsed < duration; i++)
            {
                try
                {
                    var reply = await client.SayHelloAsync(new HelloRequest { Name = "load" }, deadline: DateTime.UtcNow.AddSeconds(30));
                    result.ByInstance.AddOrUpdate(reply.Instance, 1, (_, n) => n + 1);
                }
                catch (RpcException exception)
                {
                    result.Failures.Enqueue(exception);
                }
            }
        })));
        await Task.WhenAll(workers);
        return result;
    }
}
