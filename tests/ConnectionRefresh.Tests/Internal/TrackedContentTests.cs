using System.Net;
using ConnectionRefresh.Internal;
using ConnectionRefresh.Testing;

namespace ConnectionRefresh.Tests.Internal;

/// <summary>
/// <see cref="TrackedContent"/> takes the stream of SocketsHttpHandler's responses synchronously (no Task per call),
/// recognising their content by the name of an internal runtime type. A runtime that renames it would silently move
/// every call to the slower path: this test names it instead. Real SocketsHttpHandler, real Kestrel on loopback.
/// </summary>
public sealed class TrackedContentTests
{
    [Fact]
    public async Task SocketsResponseContentType_IsTheContentOfARealSocketsHttpHandlerResponse()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var invoker = new HttpMessageInvoker(new SocketsHttpHandler());
        using var request = new HttpRequestMessage(HttpMethod.Get, cluster.Address)
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };

        using var response = await invoker.SendAsync(request, CancellationToken.None);

        Assert.NotNull(TrackedContent.SocketsResponseContentType);
        Assert.Equal(TrackedContent.SocketsResponseContentType, response.Content.GetType());
    }
}
