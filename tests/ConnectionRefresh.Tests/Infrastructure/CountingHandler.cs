namespace ConnectionRefresh.Tests.Infrastructure;

/// <summary>A DelegatingHandler that counts the calls passing through it (the application's own handler in tests).</summary>
internal sealed class CountingHandler : DelegatingHandler
{
    private int _calls;

    public int Calls => Volatile.Read(ref _calls);

    protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _calls);
        return base.SendAsync(request, cancellationToken);
    }
}
