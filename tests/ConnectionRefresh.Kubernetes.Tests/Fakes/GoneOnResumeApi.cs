using System.Net;
using k8s;
using k8s.Models;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>
/// A hand-written API server, to check the resolver against Status bytes written independently of
/// <c>SimulatedKubernetesApi</c>: its first watch delivers one event and ends (a healthy watch the server closed); the watch that resumes
/// from that event's resourceVersion gets <c>410 Gone</c>, as an in-stream <c>ERROR</c> event or as the HTTP status; later
/// watches stay open. The Status JSON is written by hand, as an API server sends it.
/// </summary>
internal sealed class GoneOnResumeApi : IAsyncDisposable
{
    private const string Gone =
        """{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"too old resource version: 11 (20)","reason":"Expired","code":410}""";

    private readonly WebApplication _app;
    private int _lists;
    private int _watches;

    private GoneOnResumeApi(WebApplication app) => _app = app;

    public Uri Url { get; private set; } = null!;

    public int Lists => Volatile.Read(ref _lists);

    public int Watches => Volatile.Read(ref _watches);

    public static async Task<GoneOnResumeApi> StartAsync(V1EndpointSlice slice, bool goneAsHttpStatus)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(IPAddress.Loopback, 0));
        var app = builder.Build();
        var api = new GoneOnResumeApi(app);
        app.MapGet("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", (Func<HttpContext, Task>)(context => api.HandleAsync(context, slice, goneAsHttpStatus)));
        await app.StartAsync();
        api.Url = new Uri(app.Urls.Single());
        return api;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    private async Task HandleAsync(HttpContext context, V1EndpointSlice slice, bool goneAsHttpStatus)
    {
        context.Response.ContentType = "application/json";
        if (context.Request.Query["watch"] != "true")
        {
            Interlocked.Increment(ref _lists);
            await context.Response.WriteAsync(
                $$"""{"kind":"EndpointSliceList","apiVersion":"discovery.k8s.io/v1","metadata":{"resourceVersion":"10"},"items":[{{KubernetesJson.Serialize(slice)}}]}""");
            return;
        }

        switch (Interlocked.Increment(ref _watches))
        {
            case 1:
                slice.Metadata.ResourceVersion = "11";
                await context.Response.WriteAsync($$"""{"type":"MODIFIED","object":{{KubernetesJson.Serialize(slice)}}}""" + "\n");
                return;
            case 2 when goneAsHttpStatus:
                context.Response.StatusCode = StatusCodes.Status410Gone;
                await context.Response.WriteAsync(Gone);
                return;
            case 2:
                await context.Response.WriteAsync($$"""{"type":"ERROR","object":{{Gone}}}""" + "\n");
                return;
            default:
                try
                {
                    await Task.Delay(Timeout.Infinite, context.RequestAborted);
                }
                catch (OperationCanceledException)
                {
                    // The client ended the watch.
                }

                return;
        }
    }
}
