using System.Diagnostics;
using System.Globalization;

namespace ConnectionRefresh.Testing.Internal;

/// <summary>Runs a short external command (ip, iptables-restore) with a time limit. Stateless.</summary>
internal static class ProcessRunner
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(30);

    public static string? Find(string name)
    {
        var path = Environment.GetEnvironmentVariable("PATH") ?? "";
        foreach (var dir in path.Split(':', StringSplitOptions.RemoveEmptyEntries).Concat(["/usr/sbin", "/sbin", "/usr/bin", "/bin"]))
        {
            var candidate = Path.Combine(dir, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }

    /// <summary>
    /// Runs <paramref name="file"/>, writes <paramref name="input"/> to its stdin, and throws an
    /// <see cref="InvalidOperationException"/> carrying the exit code, stderr and stdout if it fails, also when it exits
    /// before reading all of its input (iptables-restore stops at the first bad line; the write then fails with a broken
    /// pipe, which on its own would say nothing about why). A process still running after 30 s is killed and a
    /// <see cref="TimeoutException"/> names it and the limit. Stdin is closed in every case.
    /// </summary>
    public static Task RunAsync(string file, IReadOnlyList<string> arguments, string? input = null, CancellationToken cancellationToken = default) =>
        RunAsync(file, arguments, input, TimeProvider.System, cancellationToken);

    /// <summary>As above, with the limit measured on <paramref name="time"/> (tests pass a fake clock).</summary>
    internal static async Task RunAsync(string file, IReadOnlyList<string> arguments, string? input, TimeProvider time, CancellationToken cancellationToken)
    {
        var info = new ProcessStartInfo(Find(file) ?? file)
        {
            RedirectStandardInput = input is not null,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var argument in arguments)
        {
            info.ArgumentList.Add(argument);
        }

        var command = $"{file} {string.Join(' ', arguments)}";
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"Could not start {file}.");
        var stdout = process.StandardOutput.ReadToEndAsync(CancellationToken.None);
        var stderr = process.StandardError.ReadToEndAsync(CancellationToken.None);
        using var limit = new CancellationTokenSource(Limit, time);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, limit.Token);
        IOException? inputError = null;
        try
        {
            if (input is not null)
            {
                try
                {
                    // Flushed here, with the token: a synchronous flush in Close could block on a full pipe past the limit.
                    await process.StandardInput.WriteAsync(input.AsMemory(), stop.Token).ConfigureAwait(false);
                    await process.StandardInput.FlushAsync(stop.Token).ConfigureAwait(false);
                }
                catch (IOException ex)
                {
                    // The process closed its stdin (exited early): its exit code and stderr say why, so wait for them.
                    inputError = ex;
                }

                CloseInput(process, redirected: true); // End of input: the process may wait for it before exiting.
            }

            await process.WaitForExitAsync(stop.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException ex) when (stop.IsCancellationRequested)
        {
            process.Kill(entireProcessTree: true);
            if (!cancellationToken.IsCancellationRequested)
            {
                throw new TimeoutException(
                    $"'{command}' did not finish within its {Limit.TotalSeconds.ToString(CultureInfo.InvariantCulture)} s limit and was killed.", ex);
            }

            throw;
        }
        finally
        {
            // Also when the write was cancelled or the wait timed out; after the kill (above), so that flushing what is
            // left cannot block on a pipe nobody reads. Closing twice does nothing.
            CloseInput(process, input is not null);
        }

        await Task.WhenAll(stdout, stderr).ConfigureAwait(false);
        if (process.ExitCode != 0 || inputError is not null)
        {
            var output = $"{(await stderr.ConfigureAwait(false)).Trim()} {(await stdout.ConfigureAwait(false)).Trim()}".Trim();
            var what = inputError is null
                ? $"exited with code {process.ExitCode}"
                : $"exited with code {process.ExitCode} before reading all of its input ({inputError.Message})";
            throw new InvalidOperationException($"'{command}' {what}: {output}".Trim(), inputError);
        }
    }

    // Process.Dispose does not close the redirected streams: our end of the stdin pipe would stay open until finalized.
    private static void CloseInput(Process process, bool redirected)
    {
        if (!redirected)
        {
            return;
        }

        try
        {
            process.StandardInput.Dispose();
        }
        catch (IOException)
        {
            // Flushing what is left failed (the process has gone): the stream is closed anyway, and the failure reported.
        }
    }
}
