using System.IO.Pipelines;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace ConnectionRefresh.Server.Tests.TestSupport;

/// <summary>
/// A connection middleware placed before the connection age (outside it): records, for each connection, whether the
/// server had read the end of what the client sends (the client closed its side) when the inner middleware returned,
/// that is, before Kestrel closes the socket. Thread-safe: the flag and the results are written once per connection.
/// </summary>
internal sealed class ConnectionEndProbe
{
    private readonly List<Task<Result>> _connections = [];
    private readonly Lock _gate = new();

    /// <summary>What one connection's inner middleware did.</summary>
    /// <param name="ClientEndReadBeforeReturn">The client's end (FIN) had been read when the inner middleware returned.</param>
    /// <param name="ReturnedAt">When the inner middleware returned (<see cref="TimeProvider.System"/> timestamp).</param>
    internal sealed record Result(bool ClientEndReadBeforeReturn, long ReturnedAt);

    public IReadOnlyList<Task<Result>> Connections
    {
        get
        {
            lock (_gate)
            {
                return [.. _connections];
            }
        }
    }

    /// <summary>
    /// Starts a Greeter host whose endpoint runs this probe outside the connection age, and, inside it, right around
    /// Kestrel's HTTP handling, a step that completes <paramref name="kestrelDone"/> when Kestrel is done with a connection.
    /// </summary>
    public Task<GreeterTestHost> StartHostAsync(TaskCompletionSource? kestrelDone = null, Action<KestrelServerOptions>? kestrelDefaults = null) =>
        GreeterTestHost.StartAsync(
            _ => { },
            kestrelDefaults: kestrelDefaults,
            useConnectionAge: listen =>
            {
                listen.Use(Middleware);
                listen.UseServerConnectionAge();
                listen.Use(SignalsWhenKestrelIsDone(kestrelDone));
            });

    /// <summary>A connection middleware, placed right around Kestrel's HTTP handling, that completes <paramref name="kestrelDone"/> when Kestrel is done with a connection.</summary>
    public static Func<ConnectionDelegate, ConnectionDelegate> SignalsWhenKestrelIsDone(TaskCompletionSource? kestrelDone) => next => async connection =>
    {
        try
        {
            await next(connection);
        }
        finally
        {
            kestrelDone?.TrySetResult();
        }
    };

    public ConnectionDelegate Middleware(ConnectionDelegate next) => async connection =>
    {
        var done = new TaskCompletionSource<Result>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate)
        {
            _connections.Add(done.Task);
        }

        var original = connection.Transport;
        var input = new EndObservingReader(original.Input);
        connection.Transport = new DuplexPipe(input, original.Output);
        try
        {
            await next(connection);
        }
        finally
        {
            connection.Transport = original;
            done.TrySetResult(new Result(input.EndRead, TimeProvider.System.GetTimestamp()));
        }
    };

    private sealed record DuplexPipe(PipeReader Input, PipeWriter Output) : IDuplexPipe;

    private sealed class EndObservingReader(PipeReader inner) : PipeReader
    {
        private volatile bool _endRead;

        public bool EndRead => _endRead;

        public override void AdvanceTo(SequencePosition consumed) => inner.AdvanceTo(consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined) => inner.AdvanceTo(consumed, examined);

        public override void CancelPendingRead() => inner.CancelPendingRead();

        public override void Complete(Exception? exception = null) => inner.Complete(exception);

        public override ValueTask CompleteAsync(Exception? exception = null) => inner.CompleteAsync(exception);

        public override async ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default) =>
            Observe(await inner.ReadAsync(cancellationToken));

        public override bool TryRead(out ReadResult result)
        {
            if (!inner.TryRead(out result))
            {
                return false;
            }

            Observe(result);
            return true;
        }

        private ReadResult Observe(ReadResult result)
        {
            if (result.IsCompleted)
            {
                _endRead = true;
            }

            return result;
        }
    }
}
