using System.Diagnostics.Metrics;
using System.Globalization;

namespace ConnectionRefresh.Benchmarks.Infrastructure;

/// <summary>
/// What the server process has spent and seen so far, as it reports it on request: its CPU time (getrusage, finer
/// than the 10 ms ticks another process can read from /proc), the bytes it allocated (<c>GC.GetTotalAllocatedBytes(true)</c>),
/// and two of ConnectionRefresh.Server's metrics, which show that the package handled the connections.
/// </summary>
/// <param name="ConnectionsEnded">Connections that ended through the package (its <c>connectionrefresh.server.connection.age</c> records); 0 without it.</param>
/// <param name="ClosedByAge">Graceful closes by <c>MaxConnectionAge</c> (<c>connectionrefresh.server.connection.closes</c>, reason <c>max_age</c>).</param>
internal sealed record ServerStats(TimeSpan Cpu, long AllocatedBytes, long ConnectionsEnded, long ClosedByAge)
{
    public static readonly ServerStats Zero = new(TimeSpan.Zero, 0, 0, 0);

    public static ServerStats operator -(ServerStats after, ServerStats before) => new(
        after.Cpu - before.Cpu,
        after.AllocatedBytes - before.AllocatedBytes,
        after.ConnectionsEnded - before.ConnectionsEnded,
        after.ClosedByAge - before.ClosedByAge);

    public static ServerStats operator +(ServerStats a, ServerStats b) => new(
        a.Cpu + b.Cpu, a.AllocatedBytes + b.AllocatedBytes, a.ConnectionsEnded + b.ConnectionsEnded, a.ClosedByAge + b.ClosedByAge);

    public string ToLine() => string.Create(CultureInfo.InvariantCulture,
        $"cpu_ticks={Cpu.Ticks} allocated={AllocatedBytes} ended={ConnectionsEnded} closed_by_age={ClosedByAge}");

    public static ServerStats FromLine(string line)
    {
        var fields = line.Split(' ').Select(f => f.Split('=', 2)).ToDictionary(f => f[0], f => long.Parse(f[1], CultureInfo.InvariantCulture));
        return new(TimeSpan.FromTicks(fields["cpu_ticks"]), fields["allocated"], fields["ended"], fields["closed_by_age"]);
    }
}

/// <summary>
/// In the server process: counts ConnectionRefresh.Server's connection ends and closes by age. Its callbacks run only
/// when a connection ends or is closed, not per call. Thread-safe: the counts are updated with Interlocked.
/// </summary>
internal sealed class ServerStatsSource : IDisposable
{
    // The package's instrument names (ServerConnectionAgeMetrics is internal to it); src/ConnectionRefresh.Server/README.md, "Metrics".
    private const string MeterName = "ConnectionRefresh.Server";
    private const string AgeInstrument = "connectionrefresh.server.connection.age";
    private const string ClosesInstrument = "connectionrefresh.server.connection.closes";
    private const string ReasonTag = "connectionrefresh.close.reason";

    private readonly MeterListener _listener = new();
    private long _ended;
    private long _closedByAge;

    public ServerStatsSource()
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == MeterName && instrument.Name is AgeInstrument or ClosesInstrument)
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<double>((instrument, _, _, _) =>
        {
            if (instrument.Name == AgeInstrument)
            {
                Interlocked.Increment(ref _ended);
            }
        });
        _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            if (instrument.Name == ClosesInstrument)
            {
                foreach (var tag in tags)
                {
                    if (tag is { Key: ReasonTag, Value: "max_age" })
                    {
                        Interlocked.Add(ref _closedByAge, value);
                    }
                }
            }
        });
        _listener.Start();
    }

    public ServerStats Snapshot() => new(
        Environment.CpuUsage.TotalTime,
        GC.GetTotalAllocatedBytes(precise: true),
        Interlocked.Read(ref _ended),
        Interlocked.Read(ref _closedByAge));

    public void Dispose() => _listener.Dispose();
}
