using ConnectionRefresh.Testing.Internal;

namespace ConnectionRefresh.Testing.Tests.Internal;

public sealed class ProcessRunnerTests
{
    [SkippableFact]
    public async Task RunAsync_ProcessExitsBeforeReadingItsInput_ErrorCarriesStderrAndExitCode()
    {
        Skip.IfNot(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS(), "needs /bin/sh.");
        // Like iptables-restore stopping at a bad line: the process exits without reading stdin, so writing an input larger
        // than the pipe buffer fails with a broken pipe whatever the timing.
        var input = new string('x', 4 * 1024 * 1024);

        var error = await Assert.ThrowsAsync<InvalidOperationException>(
            () => ProcessRunner.RunAsync("sh", ["-c", "echo 'line 1 failed' >&2; exit 2"], input));

        Assert.Contains("line 1 failed", error.Message, StringComparison.Ordinal);
        Assert.Contains("exited with code 2", error.Message, StringComparison.Ordinal);
        Assert.IsAssignableFrom<IOException>(error.InnerException);
    }

    [SkippableFact]
    public async Task RunAsync_ProcessReadsItsInputAndFails_ErrorCarriesStderrAndExitCode()
    {
        Skip.IfNot(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS(), "needs /bin/sh.");

        var error = await Assert.ThrowsAsync<InvalidOperationException>(
            () => ProcessRunner.RunAsync("sh", ["-c", "cat >/dev/null; echo 'bad rule' >&2; exit 3"], "*nat\nCOMMIT\n"));

        Assert.Contains("exited with code 3: bad rule", error.Message, StringComparison.Ordinal);
    }

    [SkippableFact]
    public async Task RunAsync_ProcessReadsItsInputAndSucceeds_DoesNotThrow()
    {
        Skip.IfNot(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS(), "needs /bin/sh.");

        await ProcessRunner.RunAsync("sh", ["-c", "cat >/dev/null"], new string('x', 1024 * 1024));
    }
}
