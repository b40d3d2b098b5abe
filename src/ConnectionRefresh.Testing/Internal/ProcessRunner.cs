using System.Diagnostics;

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
    /// pipe, which on its own would say nothing about why).
    /// </summary>
    public static async Task RunAsync(string file, IReadOnlyList<string> arguments, string? input = null, CancellationToken cancellationToken = default)
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
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        limit.CancelAfter(Limit);
        IOException? inputError = null;
        if (input is not null)
        {
            try
            {
                await process.StandardInput.WriteAsync(input.AsMemory(), limit.Token).ConfigureAwait(false);
                process.StandardInput.Close();
            }
            catch (IOException ex)
            {
                // The process closed its stdin (exited early): its exit code and stderr say why, so wait for them.
                inputError = ex;
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                throw;
            }
        }

        try
        {
            await process.WaitForExitAsync(limit.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw;
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
}
