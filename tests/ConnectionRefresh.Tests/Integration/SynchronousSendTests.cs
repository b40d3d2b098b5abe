using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Sockets;
using ConnectionRefresh.Testing;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;

namespace ConnectionRefresh.Tests.Integration;

/// <summary>
/// The synchronous <see cref="HttpClient.Send(HttpRequestMessage)"/> of plain HttpClient users, against real Kestrel. On
/// SocketsHttpHandler supports it over HTTP/1.1 only; with ConnectionRefresh it works, and fails, where it does without.
/// </summary>
public sealed class SynchronousSendTests
{
    [Theory]
    [InlineData(HttpCompletionOption.ResponseContentRead)]
    [InlineData(HttpCompletionOption.ResponseHeadersRead)]
    public async Task PlainHttpClient_SynchronousSendOverHttp11_ServesEveryCallAndRecyclesConnections(HttpCompletionOption completion)
    {
        await using var cluster = await SimulatedCluster.StartAsync(new()
        {
            Replicas = 1,
            MapGreeter = false,
            ConfigureListen = listen => listen.Protocols = HttpProtocols.Http1,
            ConfigureApp = app => app.MapGet("/hello", () => "hello"),
        });
        var pod = cluster.Pods[0];
        var services = new ServiceCollection();
        services.AddHttpClient("plain", c => c.BaseAddress = pod.Address).AddConnectionRefresh(o => o.MaxRequestsPerConnection = 1);
        using var provider = services.BuildServiceProvider();
        var http = provider.GetRequiredService<IHttpClientFactory>().CreateClient("plain");

        for (var i = 0; i < 3; i++)
        {
            // Before: NotSupportedException ("The synchronous method is not supported by 'ConnectionRefreshHandler'").
            using var request = new HttpRequestMessage(HttpMethod.Get, "/hello");
            using var response = http.Send(request, completion);
            Assert.Equal(HttpVersion.Version11, response.Version);
            using var reader = new StreamReader(response.Content.ReadAsStream());
            Assert.Equal("hello", reader.ReadToEnd());
        }

        // A budget of one call per connection: each call had its own connection, and reading its body to the end (or the
        // buffering of ResponseContentRead) released it, so each one closed. 10 s: closes are quick even on a loaded machine.
        Assert.Equal(3, pod.ConnectionsAccepted);
        await Poll.UntilAsync(() => pod.OpenConnections == 0, "the retired connections closed", TimeSpan.FromSeconds(10));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task PlainHttpClient_SynchronousSendOverHttp2_FailsAsWithoutTheLibrary(bool refresh)
    {
        await using var cluster = await SimulatedCluster.StartAsync(new()
        {
            Replicas = 1,
            MapGreeter = false,
            ConfigureApp = app => app.MapGet("/hello", () => "hello"),
        });
        var services = new ServiceCollection();
        var builder = services.AddHttpClient("plain", c => c.BaseAddress = cluster.Pods[0].Address);
        if (refresh)
        {
            builder.AddConnectionRefresh();
        }

        using var provider = services.BuildServiceProvider();
        var http = provider.GetRequiredService<IHttpClientFactory>().CreateClient("plain");
        using var request = new HttpRequestMessage(HttpMethod.Get, "/hello") { Version = HttpVersion.Version20, VersionPolicy = HttpVersionPolicy.RequestVersionExact };

        // SocketsHttpHandler's own refusal, which names the way out (async, or HTTP/1.1), passed on unchanged.
        var failure = Assert.Throws<NotSupportedException>(() => http.Send(request));
        Assert.Contains("'System.Net.Http.SocketsHttpHandler' for HTTP/2", failure.Message, StringComparison.Ordinal);
        Assert.Equal(0, cluster.Pods[0].CallsServed);
    }

    [Fact]
    public void PlainHttpClient_SynchronousSendConnectionRefused_FailsAsWithoutTheLibraryAndRetiresTheConnection()
    {
        // A loopback port that was just free: nothing listens, so connecting is refused at once.
        int port;
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }

        var services = new ServiceCollection();
        services.AddMetrics();
        services.AddHttpClient("plain", c => c.BaseAddress = new Uri($"http://127.0.0.1:{port}")).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();
        using var retired = new MetricCollector<long>(provider.GetRequiredService<IMeterFactory>(), "ConnectionRefresh", "connectionrefresh.connections.retired");
        var http = provider.GetRequiredService<IHttpClientFactory>().CreateClient("plain");

        // What SocketsHttpHandler throws without the library, which outer handlers retry; the failed connection is
        // retired as in SendAsync.
        var failure = Assert.Throws<HttpRequestException>(() => http.Send(new HttpRequestMessage(HttpMethod.Get, "/hello")));
        Assert.Equal(HttpRequestError.ConnectionError, failure.HttpRequestError);
        Assert.Equal("connection_failure", Assert.Single(retired.GetMeasurementSnapshot()).Tags["reason"]);
    }
}
