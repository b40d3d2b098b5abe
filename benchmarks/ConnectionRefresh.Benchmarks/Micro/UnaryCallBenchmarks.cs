using BenchmarkDotNet.Attributes;
using ConnectionRefresh.Benchmarks.Infrastructure;
using ConnectionRefresh.Protos;

namespace ConnectionRefresh.Benchmarks.Micro;

/// <summary>
/// Cost of one unary call over real loopback Kestrel (h2c), one call at a time, for each way of holding the
/// connection. The server runs in a separate process (started by Program, reached through environment
/// variables) so that "Allocated" counts the client alone; without it, an in-process server is used and its
/// allocations are counted too.
/// </summary>
[MemoryDiagnoser]
public class UnaryCallBenchmarks
{
    private static readonly HelloRequest Request = new() { Name = "bench" };

    private BenchServer? _inProcessServer;
    private GreeterTarget _bare = null!;
    private GreeterTarget _defaults = null!;
    private GreeterTarget _defaultsNoLoggers = null!;
    private GreeterTarget _refresh1 = null!;
    private GreeterTarget _refresh1DefaultLogger = null!;
    private GreeterTarget _refresh4 = null!;
    private GreeterTarget _refresh16 = null!;
    private GreeterTarget _recycle1 = null!;
    private GreeterTarget _recycle4 = null!;

    [GlobalSetup]
    public async Task SetupAsync()
    {
        var h2c = Environment.GetEnvironmentVariable(ServerProcess.H2cVariable);
        Uri address;
        if (h2c is null)
        {
            Console.WriteLine("// No out-of-process server: starting one in this process (its allocations are counted too).");
            _inProcessServer = await BenchServer.StartAsync();
            address = _inProcessServer.H2c;
        }
        else
        {
            address = new Uri(h2c);
        }

        // Clients open their connections on first use, so only the running benchmark's connections exist.
        _bare = GreeterTarget.Create(Strategy.BareChannel, address, null);
        _defaults = GreeterTarget.Create(Strategy.GrpcClientDefaults, address, null);
        _defaultsNoLoggers = GreeterTarget.Create(Strategy.GrpcClientNoLoggers, address, null);
        _refresh1 = GreeterTarget.Create(Strategy.Refresh1, address, null);
        _refresh1DefaultLogger = GreeterTarget.Create(Strategy.Refresh1DefaultLogger, address, null);
        _refresh4 = GreeterTarget.Create(Strategy.Refresh4, address, null);
        _refresh16 = GreeterTarget.Create(Strategy.Refresh16, address, null);
        _recycle1 = GreeterTarget.Create(Strategy.Refresh1Recycle1000, address, null);
        _recycle4 = GreeterTarget.Create(Strategy.Refresh4Recycle1000, address, null);
    }

    [GlobalCleanup]
    public async Task CleanupAsync()
    {
        foreach (var target in new[] { _bare, _defaults, _defaultsNoLoggers, _refresh1, _refresh1DefaultLogger, _refresh4, _refresh16, _recycle1, _recycle4 })
        {
            await target.DisposeAsync();
        }

        if (_inProcessServer is not null)
        {
            await _inProcessServer.DisposeAsync();
        }
    }

    [Benchmark(Baseline = true, Description = "bare GrpcChannel")]
    public Task<HelloReply> BareChannel() => _bare.CallAsync(Request);

    [Benchmark(Description = "AddGrpcClient defaults")]
    public Task<HelloReply> GrpcClientDefaults() => _defaults.CallAsync(Request);

    [Benchmark(Description = "AddGrpcClient, RemoveAllLoggers")]
    public Task<HelloReply> GrpcClientNoLoggers() => _defaultsNoLoggers.CallAsync(Request);

    [Benchmark(Description = "AddConnectionRefresh K=1")]
    public Task<HelloReply> Refresh1() => _refresh1.CallAsync(Request);

    [Benchmark(Description = "AddConnectionRefresh K=1, AddDefaultLogger")]
    public Task<HelloReply> Refresh1DefaultLogger() => _refresh1DefaultLogger.CallAsync(Request);

    [Benchmark(Description = "AddConnectionRefresh K=4")]
    public Task<HelloReply> Refresh4() => _refresh4.CallAsync(Request);

    [Benchmark(Description = "AddConnectionRefresh K=16")]
    public Task<HelloReply> Refresh16() => _refresh16.CallAsync(Request);

    [Benchmark(Description = "K=1, MaxRequestsPerConnection=1000")]
    public Task<HelloReply> Refresh1Recycle1000() => _recycle1.CallAsync(Request);

    [Benchmark(Description = "K=4, MaxRequestsPerConnection=1000")]
    public Task<HelloReply> Refresh4Recycle1000() => _recycle4.CallAsync(Request);
}
