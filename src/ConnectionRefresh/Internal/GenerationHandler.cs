namespace ConnectionRefresh.Internal;

/// <summary>
/// Calls the generation's SocketsHttpHandler directly. An HttpMessageInvoker would report every request to the
/// System.Net.Http EventSource a second time (grpc-dotnet's own invoker already does).
/// </summary>
internal sealed class GenerationHandler(HttpMessageHandler inner) : DelegatingHandler(inner)
{
    public Task<HttpResponseMessage> ForwardAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        => SendAsync(request, cancellationToken);

    public HttpResponseMessage Forward(HttpRequestMessage request, CancellationToken cancellationToken)
        => Send(request, cancellationToken);
}
