using ConnectionRefresh.Testing.Internal;
using Microsoft.Extensions.Time.Testing;

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
    public async Task RunAsync_ProcessExitsBeforeReadingItsInput_ClosesItsEndOfTheStdinPipe()
    {
        Skip.IfNot(OperatingSystem.IsLinux(), "needs /proc.");
        // The process names its stdin pipe (pipe:[inode]) on stderr, which the error carries, then exits without reading:
        // the write fails with a broken pipe. Our end of that pipe must be closed then, not left to the finalizer.
        var input = new string('x', 4 * 1024 * 1024);

        var error = await Assert.ThrowsAsync<InvalidOperationException>(
            () => ProcessRunner.RunAsync("sh", ["-c", "readlink /proc/self/fd/0 >&2; exit 2"], input));

        var pipe = System.Text.RegularExpressions.Regex.Match(error.Message, @"pipe:\[\d+\]").Value;
        Assert.NotEmpty(pipe);
        Assert.DoesNotContain(pipe, OpenFileDescriptorTargets());
    }

    [SkippableFact]
    public async Task RunAsync_ProcessOutlivesTheLimit_ThrowsTimeoutNamingTheCommandAndTheLimitAndClosesStdin()
    {
        Skip.IfNot(OperatingSystem.IsLinux(), "needs /proc and sleep.");
        // The process names its stdin pipe in a file, then neither reads its input nor exits: the write blocks until the
        // limit, measured on the fake clock, kills it.
        var pipeFile = Path.GetTempFileName();
        try
        {
            var time = new FakeTimeProvider();
            var run = ProcessRunner.RunAsync("sh", ["-c", $"readlink /proc/self/fd/0 > {pipeFile}; sleep 60"], new string('x', 4 * 1024 * 1024), time, CancellationToken.None);
            await Poll.UntilAsync(() => File.ReadAllText(pipeFile).Contains("pipe:", StringComparison.Ordinal), "the process to start");

            await Poll.UntilAsync(() => { time.Advance(TimeSpan.FromSeconds(1)); return run.IsCompleted; }, "the limit to end the run");

            var error = await Assert.ThrowsAsync<TimeoutException>(() => run);
            Assert.Contains($"'sh -c readlink /proc/self/fd/0 > {pipeFile}; sleep 60'", error.Message, StringComparison.Ordinal);
            Assert.Contains("30 s", error.Message, StringComparison.Ordinal);
            Assert.DoesNotContain(File.ReadAllText(pipeFile).Trim(), OpenFileDescriptorTargets());
        }
        finally
        {
            File.Delete(pipeFile);
        }
    }

    [SkippableFact]
    public async Task RunAsync_CallerCancels_ThrowsOperationCanceled()
    {
        Skip.IfNot(OperatingSystem.IsLinux() || OperatingSystem.IsMacOS(), "needs sleep.");
        using var cancel = new CancellationTokenSource();

        var run = ProcessRunner.RunAsync("sleep", ["60"], cancellationToken: cancel.Token);
        await cancel.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Poll.WithTimeout(run, "the cancelled run to end"));
    }

    // What this process's open file descriptors point to (e.g. pipe:[123]); ones closed while listed are skipped.
    private static List<string> OpenFileDescriptorTargets()
    {
        var targets = new List<string>();
        foreach (var fd in Directory.GetFiles("/proc/self/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget is { } target)
                {
                    targets.Add(target);
                }
            }
            catch (IOException)
            {
            }
        }

        return targets;
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
