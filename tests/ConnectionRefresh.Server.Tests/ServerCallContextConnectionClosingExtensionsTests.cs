using Grpc.Core;
using Microsoft.AspNetCore.Http;

namespace ConnectionRefresh.Server.Tests;

public sealed class ServerCallContextConnectionClosingExtensionsTests
{
    [Fact]
    public void GetConnectionClosingToken_ContextNotFromAspNetCore_IsNone()
    {
        // A service's own unit tests call its methods with a ServerCallContext made for them (no HttpContext): a
        // streaming method that links GetConnectionClosingToken(), as src/ConnectionRefresh.Server/README.md shows, must still run there.
        var context = new UnitTestServerCallContext();

        Assert.Null(context.GetConnectionClosingFeature());
        Assert.Equal(CancellationToken.None, context.GetConnectionClosingToken());
    }

    [Fact]
    public void GetConnectionClosingToken_HttpContextInUserState_IsTheFeaturesToken()
    {
        // grpc-dotnet's documented way for a custom context to carry the request's HttpContext.
        using var closing = new CancellationTokenSource();
        var httpContext = new DefaultHttpContext();
        httpContext.Features.Set<IConnectionClosingFeature>(new ClosingFeature(closing.Token));
        var context = new UnitTestServerCallContext();
        context.UserState["__HttpContext"] = httpContext;

        Assert.Equal(closing.Token, context.GetConnectionClosingToken());
    }

    private sealed record ClosingFeature(CancellationToken ConnectionClosing) : IConnectionClosingFeature
    {
        public TimeSpan GracePeriod => Timeout.InfiniteTimeSpan;
    }

    // What a unit test of a gRPC service passes for the context (as Grpc.Core.Testing's TestServerCallContext).
    private sealed class UnitTestServerCallContext : ServerCallContext
    {
        protected override string MethodCore => "/greet.Greeter/Chat";

        protected override string HostCore => "localhost";

        protected override string PeerCore => "ipv4:127.0.0.1:1";

        protected override DateTime DeadlineCore => DateTime.MaxValue;

        protected override Metadata RequestHeadersCore { get; } = [];

        protected override CancellationToken CancellationTokenCore => CancellationToken.None;

        protected override Metadata ResponseTrailersCore { get; } = [];

        protected override Status StatusCore { get; set; }

        protected override WriteOptions? WriteOptionsCore { get; set; }

        protected override AuthContext AuthContextCore { get; } = new(null, []);

        protected override ContextPropagationToken CreatePropagationTokenCore(ContextPropagationOptions? options) =>
            throw new NotSupportedException();

        protected override Task WriteResponseHeadersAsyncCore(Metadata responseHeaders) => Task.CompletedTask;
    }
}
