using System.Runtime.InteropServices;

namespace ConnectionRefresh.Benchmarks.Scenarios;

internal sealed record MachineInfo(string Cpu, int Cores, string Os, string Runtime, bool ServerGc)
{
    public static MachineInfo Current() => new(
        CpuModel(),
        Environment.ProcessorCount,
        RuntimeInformation.OSDescription,
        RuntimeInformation.FrameworkDescription,
        System.Runtime.GCSettings.IsServerGC);

    public override string ToString() => $"{Cpu}, {Cores} cores, {Os}, {Runtime}, {(ServerGc ? "server" : "workstation")} GC";

    private static string CpuModel()
    {
        try
        {
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal));
            return line?.Split(':', 2)[1].Trim() ?? RuntimeInformation.ProcessArchitecture.ToString();
        }
        catch (IOException)
        {
            return RuntimeInformation.ProcessArchitecture.ToString();
        }
        catch (UnauthorizedAccessException)
        {
            return RuntimeInformation.ProcessArchitecture.ToString();
        }
    }
}
