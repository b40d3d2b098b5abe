using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace ConnectionRefresh.Testing.Internal;

/// <summary>
/// Makes a listening socket answer nothing to new connections, neither a SYN-ACK nor a reset, like a host that is gone,
/// without privileges or network beyond loopback: a classic BPF socket filter that drops every packet. Linux runs a
/// listener's filter on each incoming SYN before any handshake, so connects to it hang until the client's connect timeout;
/// connections accepted before are not affected.
/// </summary>
internal static class SilentListener
{
    private const int SolSocket = 1;
    private const int SoAttachFilter = 26;

    /// <summary>Attaches the filter; false where that is not possible (not Linux, a closed socket).</summary>
    public static bool TryDropNewConnections(Socket listener)
    {
        if (!OperatingSystem.IsLinux())
        {
            return false;
        }

        // struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }: BPF_RET | BPF_K with k = 0, "accept 0 bytes", i.e. drop.
        var instruction = Marshal.AllocHGlobal(8);
        try
        {
            Marshal.WriteInt16(instruction, 0, 0x06);
            Marshal.WriteInt16(instruction, 2, 0);
            Marshal.WriteInt32(instruction, 4, 0);
            // struct sock_fprog { unsigned short len; struct sock_filter *filter; }: the kernel copies the program.
            var program = new byte[2 * IntPtr.Size];
            BitConverter.TryWriteBytes(program, (ushort)1);
            if (IntPtr.Size == 8)
            {
                BitConverter.TryWriteBytes(program.AsSpan(8), instruction.ToInt64());
            }
            else
            {
                BitConverter.TryWriteBytes(program.AsSpan(4), instruction.ToInt32());
            }

            listener.SetRawSocketOption(SolSocket, SoAttachFilter, program);
            return true;
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            return false;
        }
        finally
        {
            Marshal.FreeHGlobal(instruction);
        }
    }
}
