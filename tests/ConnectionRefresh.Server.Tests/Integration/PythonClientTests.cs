using System.Diagnostics;
using System.Text.Json;
using ConnectionRefresh.Server.Tests.TestSupport;

namespace ConnectionRefresh.Server.Tests.Integration;

/// <summary>
/// A client that is not .NET — Python's grpcio (gRPC C-core), from Debian's python3-grpcio, which <c>.ci/run</c>
/// installs — calls a real Kestrel server through several rotations; no call may fail.
/// </summary>
public sealed class PythonClientTests
{
    private const string Python = "/usr/bin/python3";

    [SkippableFact]
    public async Task MaxConnectionAge_PythonGrpcioClientThroughSeveralRotations_NoCallFails()
    {
        Skip.IfNot(File.Exists(Python), $"{Python} is missing (install python3 and python3-grpcio, as .ci/run does).");
        Skip.IfNot(await CanImportGrpcAsync(), $"{Python} cannot import grpc (install Debian's python3-grpcio, as .ci/run does).");

        const int Rotations = 4;
        // Real time here: the Python client cannot follow a fake clock. 1 s is the shortest allowed age.
        await using var host = await GreeterTestHost.StartAsync(o =>
        {
            o.MaxConnectionAge = TimeSpan.FromSeconds(1);
            o.MaxConnectionAgeJitter = 0.1;
            o.MaxConnectionAgeGrace = TimeSpan.FromSeconds(30);
        });

        var script = Path.Combine(AppContext.BaseDirectory, "Python", "greeter_client.py");
        var start = new ProcessStartInfo(Python)
        {
            ArgumentList = { script, $"{host.Address.Host}:{host.Address.Port}", "120" },
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.Environment["PYTHONDONTWRITEBYTECODE"] = "1";
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            Assert.Equal("started", await Poll.WithTimeout(process.StandardOutput.ReadLineAsync(), "the Python client to start"));

            // Rotations are counted on the server; the deadline is generous for a loaded 2-core machine, and the
            // client stops by itself after 120 s anyway.
            await Poll.UntilAsync(() => host.CloseCount >= Rotations, $"{Rotations} graceful closes", TimeSpan.FromSeconds(90));
            process.StandardInput.Close();

            var summaryLine = await Poll.WithTimeout(process.StandardOutput.ReadLineAsync(), "the Python client's summary");
            await Poll.WithTimeout(process.WaitForExitAsync(), "the Python client to exit");
            Assert.True(process.ExitCode == 0, $"python exited with {process.ExitCode}: {await stderr}");

            using var summary = JsonDocument.Parse(summaryLine!);
            var root = summary.RootElement;
            Assert.True(root.GetProperty("failed").GetInt32() == 0, $"Python calls failed: {summaryLine}");
            Assert.True(root.GetProperty("ok").GetInt32() > 0, summaryLine);
            Assert.Equal("pod-0", Assert.Single(root.GetProperty("instances").EnumerateArray()).GetString());
            Assert.True(host.ConnectionsAccepted >= Rotations, $"expected ≥ {Rotations} connections, saw {host.ConnectionsAccepted}");
            Assert.Equal(0, host.AbortCount);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }
    }

    private static async Task<bool> CanImportGrpcAsync()
    {
        var start = new ProcessStartInfo(Python)
        {
            ArgumentList = { "-c", "import grpc" },
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        using var process = Process.Start(start)!;
        await Poll.WithTimeout(process.WaitForExitAsync(), "python -c 'import grpc'");
        return process.ExitCode == 0;
    }
}
