using System.Collections.Concurrent;
using System.Runtime.InteropServices;

namespace ConnectionRefresh.Testing.Internal;

/// <summary>
/// A dedicated thread that entered a network namespace with setns(2). A socket belongs to the namespace of the thread
/// that created it, for its whole life, whichever thread uses it later; so sockets created here (the pods' listening
/// sockets, the ClusterIP's connections to the service address) live in the namespace while the rest of the process
/// stays in the host's.
/// </summary>
/// <remarks>Thread-safe: work items go through a <see cref="BlockingCollection{T}"/> consumed by the one thread.</remarks>
internal sealed class NamespaceThread : IDisposable
{
    private const int CloneNewNet = 0x40000000;
    private readonly BlockingCollection<Action> _work = [];
    private readonly Thread _thread;

    private NamespaceThread(string namespaceName, TaskCompletionSource entered)
    {
        _thread = new Thread(() => Run(namespaceName, entered)) { IsBackground = true, Name = "crsim-netns" };
        _thread.Start();
    }

    public static NamespaceThread Start(string namespaceName)
    {
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new NamespaceThread(namespaceName, entered);
        try
        {
            entered.Task.GetAwaiter().GetResult();
        }
        catch
        {
            thread.Dispose();
            throw;
        }

        return thread;
    }

    public T Invoke<T>(Func<T> function)
    {
        var result = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        _work.Add(() =>
        {
            try
            {
                result.SetResult(function());
            }
#pragma warning disable CA1031 // Passed on to the caller.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                result.SetException(ex);
            }
        });
        return result.Task.GetAwaiter().GetResult();
    }

    public void Dispose()
    {
        _work.CompleteAdding();
        if (Thread.CurrentThread != _thread)
        {
            _thread.Join();
        }

        _work.Dispose();
    }

    private void Run(string namespaceName, TaskCompletionSource entered)
    {
        using (var handle = File.OpenHandle(Path.Combine("/var/run/netns", namespaceName)))
        {
            if (NativeMethods.SetNs(handle.DangerousGetHandle().ToInt32(), CloneNewNet) != 0)
            {
                entered.SetException(new IOException($"setns({namespaceName}) failed with errno {Marshal.GetLastPInvokeError()}."));
                _work.CompleteAdding();
                return;
            }
        }

        entered.SetResult();
        foreach (var work in _work.GetConsumingEnumerable())
        {
            work();
        }
    }

    private static class NativeMethods
    {
        [DllImport("libc", EntryPoint = "setns", SetLastError = true)]
        [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
        public static extern int SetNs(int fd, int nstype);
    }
}
