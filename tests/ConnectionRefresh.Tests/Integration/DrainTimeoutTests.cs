using System.Buffers.Binary;
using System.Net;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using ConnectionRefresh.Tests.Infrastructure;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;

namespace ConnectionRefresh.Tests.Integration;

/// <summary>
/// Calls that <see cref="ConnectionRefreshOptions.DrainTimeout"/> cuts on a retired connection, against real Kestrel pods:
/// what plain HttpClient users, their outer handlers and gRPC callers see.
/// </summary>
public sealed class DrainTimeoutTests
{
    // A budget of one call retires the connection as the call starts, so the DrainTimeout (its minimum, 1 s) runs
    // from then; the server answers far later than that, so the cut always comes first.
    private static void CutAfterOneSecond(ConnectionRefreshOptions o)
    {
        o.MaxRequestsPerConnection = 1;
        o.DrainTimeout = TimeSpan.FromSeconds(1);
    }

    [Fact]
    public async Task PlainHttpClient_CutBeforeResponseHeaders_FailsWithHttpRequestException()
    {
        // Before the response, HttpClient users and outer handlers (AddStandardResilienceHandler, Polly's
        // HandleTransientHttpError) treat only an HttpRequestException as transient, as SocketsHttpHandler throws it.
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var provider = PlainClient(cluster.Address, out var http);
        using var request = GrpcRequest("/greet.Greeter/SayHello", new HelloRequest { Name = "slow", DelayMs = 600_000 });

        var failure = await Poll.WithTimeout(
            Assert.ThrowsAnyAsync<Exception>(() => http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead)),
            "the call to be cut");

        var cut = Assert.IsType<HttpRequestException>(failure);
        Assert.Contains("DrainTimeout", cut.Message, StringComparison.Ordinal);
        Assert.IsType<HttpIOException>(cut.InnerException); // what grpc-dotnet maps to Unavailable
    }

    [Fact]
    public async Task PlainHttpClient_CutWhileReadingTheBody_FailsWithHttpIOException()
    {
        // While the body is read SocketsHttpHandler throws IOExceptions, so the cut stays one there.
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var provider = PlainClient(cluster.Address, out var http);
        using var request = GrpcRequest("/greet.Greeter/StreamHellos", new StreamRequest { Name = "slow", Count = 2, DelayMs = 600_000 });

        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        var body = await response.Content.ReadAsStreamAsync();
        var failure = await Poll.WithTimeout(
            Assert.ThrowsAnyAsync<Exception>(async () =>
            {
                // The first message arrives at once; the second would come after 10 minutes.
                while (await body.ReadAsync(new byte[64]) > 0)
                {
                }
            }),
            "the stream to be cut");

        Assert.IsType<HttpIOException>(failure);
        Assert.Contains("DrainTimeout", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task GrpcUnaryCall_CutBeforeResponseHeaders_FailsUnavailable()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var host = GreeterClientHost.WithRefresh(cluster.Address, CutAfterOneSecond);

        var failure = await Poll.WithTimeout(
            Assert.ThrowsAsync<RpcException>(() => host.Client.SayHelloAsync(new HelloRequest { Name = "slow", DelayMs = 600_000 }).ResponseAsync),
            "the call to be cut");

        Assert.Equal(StatusCode.Unavailable, failure.StatusCode);
        Assert.Contains("DrainTimeout", failure.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task GrpcServerStream_CutWhileReadingTheBody_FailsUnavailable()
    {
        await using var cluster = await SimulatedCluster.StartAsync(new() { Replicas = 1 });
        using var host = GreeterClientHost.WithRefresh(cluster.Address, CutAfterOneSecond);
        using var call = host.Client.StreamHellos(new StreamRequest { Name = "slow", Count = 2, DelayMs = 600_000 });

        Assert.True(await Poll.WithTimeout(call.ResponseStream.MoveNext(CancellationToken.None), "the first message"));
        var failure = await Poll.WithTimeout(
            Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(CancellationToken.None)),
            "the stream to be cut");

        Assert.Equal(StatusCode.Unavailable, failure.StatusCode);
        Assert.Contains("DrainTimeout", failure.Status.Detail, StringComparison.Ordinal);
    }

    private static ServiceProvider PlainClient(Uri address, out HttpClient http)
    {
        var services = new ServiceCollection();
        services.AddHttpClient("plain", c =>
        {
            c.BaseAddress = address;
            c.DefaultRequestVersion = HttpVersion.Version20;
            c.DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact;
        }).AddConnectionRefresh(CutAfterOneSecond);
        var provider = services.BuildServiceProvider();
        http = provider.GetRequiredService<IHttpClientFactory>().CreateClient("plain");
        return provider;
    }

    // A raw gRPC call: the message in one 5-byte-prefixed gRPC frame.
    private static HttpRequestMessage GrpcRequest(string path, IMessage message)
    {
        var payload = message.ToByteArray();
        var frame = new byte[5 + payload.Length];
        BinaryPrimitives.WriteInt32BigEndian(frame.AsSpan(1), payload.Length);
        payload.CopyTo(frame, 5);
        var content = new ByteArrayContent(frame);
        content.Headers.ContentType = new("application/grpc");
        return new HttpRequestMessage(HttpMethod.Post, path)
        {
            Content = content,
            Version = HttpVersion.Version20, // a message made by hand does not take the client's default version
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
    }
}
