using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http.Features;

namespace ConnectionRefresh.Server.Tests.TestSupport;

/// <summary>A connection for middleware unit tests: records RequestClose and Abort instead of doing them.</summary>
internal sealed class FakeConnection : ConnectionContext, IConnectionLifetimeNotificationFeature
{
    private int _closeRequests;
    private int _aborts;

    public FakeConnection(string id, bool withLifetimeNotification = true)
    {
        ConnectionId = id;
        if (withLifetimeNotification)
        {
            Features.Set<IConnectionLifetimeNotificationFeature>(this);
        }
    }

    public override string ConnectionId { get; set; }

    public override IFeatureCollection Features { get; } = new FeatureCollection();

    public override IDictionary<object, object?> Items { get; set; } = new Dictionary<object, object?>();

    public override IDuplexPipe Transport { get; set; } = null!;

    public CancellationToken ConnectionClosedRequested { get; set; }

    public int CloseRequests => Volatile.Read(ref _closeRequests);

    public int Aborts => Volatile.Read(ref _aborts);

    public ConnectionAbortedException? AbortReason { get; private set; }

    /// <summary>Completes when the application (the "next" delegate) should return: the connection ends.</summary>
    public TaskCompletionSource End { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void RequestClose() => Interlocked.Increment(ref _closeRequests);

    public override void Abort(ConnectionAbortedException abortReason)
    {
        AbortReason = abortReason;
        Interlocked.Increment(ref _aborts);
    }

    public IConnectionClosingFeature? Closing => Features.Get<IConnectionClosingFeature>();
}
