using System.Globalization;
using ScaleOutDemo.Strategies;

namespace ScaleOutDemo;

/// <summary>Command-line settings.</summary>
internal sealed class DemoOptions
{
    public TimeSpan Duration { get; private set; } = TimeSpan.FromSeconds(60);

    public int Clients { get; private set; } = 3;

    public int WorkersPerClient { get; private set; } = 4;

    public int Pods { get; private set; } = 3;

    public int WorkMs { get; private set; } = 10;

    public int PodCapacity { get; private set; } = 4;

    public bool KubeProxy { get; private set; }

    public string OutputDirectory { get; private set; } = Path.Combine("out", "demo");

    public IReadOnlyList<IClientStrategy> Strategies { get; private set; } = StrategyCatalog.All;

    public bool ShowHelp { get; private set; }

    public static string Help => $"""
        ScaleOutDemo: gRPC client strategies side by side against simulated Kubernetes clusters.

        Every strategy gets its own identical cluster (real Kestrel pods behind a kube-proxy-like ClusterIP)
        and the same script, at the same time: load from several client replicas; scale-out (pods → 2 × pods)
        at 15 % of the run; a rolling update (surge 1) at 45 %; the busiest pod black-holed (a dead node) at 72 %
        and taken out of the endpoints at 80 %. Then a table, a chart (PNG) and every figure as JSON.
        Pods stop like a Deployment's: out of the endpoints first, a 1 s preStop sleep while they still serve,
        then GOAWAY, and running calls get a 10 s termination grace period.

        Usage: dotnet run --project examples/ScaleOutDemo -c Release -- [options]

          --duration <seconds>   length of the run (default 60, 10–600)
          --clients <n>          client replicas (default 3, 1–16); each has its own connections
          --workers <n>          concurrent callers per client replica (default 4, 1–32)
          --pods <n>             pods at start; scale-out doubles them (default 3, 1–16)
          --work-ms <ms>         server-side work per call (default 10, 0–1000)
          --pod-capacity <n>     calls a pod runs at once, like its CPU limit; more wait in a queue, so an
                                 overloaded pod is slower (default 4, 1–1000)
          --strategies <list>    comma-separated, from: {string.Join(", ", StrategyCatalog.All.Select(s => s.Name))} (default all)
          --kube-proxy           use the real kube-proxy iptables mode (Linux, root, iptables) instead of the
                                 in-process ClusterIP
          --out <dir>            where to write chart.png and results.json (default out/demo)
          --help                 this text

        Strategies:
        {string.Join(Environment.NewLine, StrategyCatalog.All.Select(s => $"  {s.Name,-12} {s.Description}"))}
        """;

    public static DemoOptions Parse(IReadOnlyList<string> args)
    {
        var options = new DemoOptions();
        for (var i = 0; i < args.Count; i++)
        {
            var arg = args[i];
            string Value() => i + 1 < args.Count ? args[++i] : throw new ArgumentException($"{arg} needs a value.");
            int Int(int min, int max)
            {
                var text = Value();
                return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) && value >= min && value <= max
                    ? value
                    : throw new ArgumentException($"{arg} must be a whole number from {min} to {max}, not '{text}'.");
            }

            switch (arg)
            {
                case "--duration": options.Duration = TimeSpan.FromSeconds(Int(10, 600)); break;
                case "--clients": options.Clients = Int(1, 16); break;
                case "--workers": options.WorkersPerClient = Int(1, 32); break;
                case "--pods": options.Pods = Int(1, 16); break;
                case "--work-ms": options.WorkMs = Int(0, 1000); break;
                case "--pod-capacity": options.PodCapacity = Int(1, 1000); break;
                case "--kube-proxy": options.KubeProxy = true; break;
                case "--out": options.OutputDirectory = Value(); break;
                case "--strategies":
                    var names = Value().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                    options.Strategies = [.. names.Select(n => StrategyCatalog.All.FirstOrDefault(s => s.Name.Equals(n, StringComparison.OrdinalIgnoreCase))
                        ?? throw new ArgumentException($"Unknown strategy '{n}'. Known: {string.Join(", ", StrategyCatalog.All.Select(s => s.Name))}."))
                        .Distinct()];
                    if (options.Strategies.Count == 0)
                    {
                        throw new ArgumentException("--strategies needs at least one name.");
                    }

                    break;
                case "--help" or "-h" or "-?": options.ShowHelp = true; break;
                default: throw new ArgumentException($"Unknown option '{arg}'. See --help.");
            }
        }

        return options;
    }
}
