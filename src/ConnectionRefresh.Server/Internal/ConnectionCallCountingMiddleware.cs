using Microsoft.AspNetCore.Http;

namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// HTTP middleware, first in the pipeline: counts each request (an HTTP/2 stream, a gRPC call) as running on its
/// connection for as long as the rest of the pipeline runs, so that idle connections can be told apart from busy
/// ones. Stateless; the counter it calls is thread-safe.
/// </summary>
internal sealed class ConnectionCallCountingMiddleware
{
    private readonly RequestDelegate _next;

    public ConnectionCallCountingMiddleware(RequestDelegate next) => _next = next;

    public Task InvokeAsync(HttpContext context)
    {
        var counter = context.Features.Get<IConnectionCallCounter>();
        return counter is null ? _next(context) : InvokeCountedAsync(context, counter);
    }

    private async Task InvokeCountedAsync(HttpContext context, IConnectionCallCounter counter)
    {
        counter.CallStarted();
        try
        {
            await _next(context).ConfigureAwait(false);
        }
        finally
        {
            counter.CallEnded();
        }
    }
}
