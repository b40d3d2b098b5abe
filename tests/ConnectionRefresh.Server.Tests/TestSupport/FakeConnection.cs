using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Features;

namespace ConnectionRefresh.Server.Tests.TestSupport;

/// <summary>
/// A connection for middleware unit tests: records RequestClose and Abort. Like Kestrel's, RequestClose cancels
/// <see cref="ConnectionClosedRequested"/>; like the socket transport's, Abort ends what the server reads with the abort
/// reason and fires <see cref="ConnectionClosed"/>.
/// </summary>
internal sealed class FakeConnection : ConnectionContext, IConnectionLifetimeNotificationFeature
{
    private readonly CancellationTokenSource _closeRequested = new();
    private readonly CancellationTokenSource _closed = new();
    private int _closeRequests;
    private int _aborts;

    public FakeConnection(string id, bool withLifetimeNotification = true)
    {
        ConnectionId = id;
        Transport = new DuplexPipe(ClientToServer.Reader, ServerToClient.Writer);
        if (withLifetimeNotification)
        {
            Features.Set<IConnectionLifetimeNotificationFeature>(this);
        }
    }

    public override string ConnectionId { get; set; }

    public override IFeatureCollection Features { get; } = new FeatureCollection();

    public override IDictionary<object, object?> Items { get; set; } = new Dictionary<object, object?>();

    public override IDuplexPipe Transport { get; set; }

    /// <summary>What the "client" sends: the server reads it from <see cref="Transport"/>.</summary>
    public Pipe ClientToServer { get; } = new();

    /// <summary>What the server sends: completed when the server closes the socket.</summary>
    public Pipe ServerToClient { get; } = new();

    /// <summary>Whether the server side has closed the (fake) socket. Leaves what the server wrote unread.</summary>
    public bool SocketClosed
    {
        get
        {
            if (!ServerToClient.Reader.TryRead(out var result))
            {
                return false;
            }

            ServerToClient.Reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
            return result.IsCompleted;
        }
    }

    public CancellationToken ConnectionClosedRequested
    {
        get => _closeRequested.Token;
        set => throw new NotSupportedException();
    }

    public override CancellationToken ConnectionClosed
    {
        get => _closed.Token;
        set => throw new NotSupportedException();
    }

    /// <summary>RequestClose calls (by the package: <see cref="ServerRequestsClose"/> is not counted).</summary>
    public int CloseRequests => Volatile.Read(ref _closeRequests);

    public int Aborts => Volatile.Read(ref _aborts);

    public ConnectionAbortedException? AbortReason { get; private set; }

    /// <summary>
    /// Completes when the application (the "next" delegate) should return: the connection ends. Continuations run
    /// synchronously, so that when <c>TrySetResult</c> returns the middleware has run up to its next real wait.
    /// </summary>
    public TaskCompletionSource End { get; } = new();

    public void RequestClose()
    {
        Interlocked.Increment(ref _closeRequests);
        _closeRequested.Cancel();
    }

    /// <summary>What Kestrel does to every connection when the server stops: a graceful close (GOAWAY on HTTP/2).</summary>
    public void ServerRequestsClose() => _closeRequested.Cancel();

    public override void Abort(ConnectionAbortedException abortReason)
    {
        AbortReason = abortReason;
        Interlocked.Increment(ref _aborts);
        ClientToServer.Writer.Complete(abortReason);
        _closed.Cancel();
    }

    public IConnectionClosingFeature? Closing => Features.Get<IConnectionClosingFeature>();

    /// <summary>What Kestrel does when it is done with a connection: complete the transport it was given.</summary>
    public void ServerCompletesTransport()
    {
        Transport.Input.Complete();
        Transport.Output.Complete();
    }

    private sealed record DuplexPipe(PipeReader Input, PipeWriter Output) : IDuplexPipe;
}
