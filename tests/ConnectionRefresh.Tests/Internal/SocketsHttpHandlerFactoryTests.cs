using ConnectionRefresh.Internal;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace ConnectionRefresh.Tests.Internal;

public sealed class SocketsHttpHandlerFactoryTests
{
    private static SocketsHttpHandlerFactory Factory(ConnectionRefreshOptions options, params Action<SocketsHttpHandler, IServiceProvider>[] configure)
        => Factory(options, grpc: true, configure);

    private static SocketsHttpHandlerFactory Factory(ConnectionRefreshOptions options, bool grpc, params Action<SocketsHttpHandler, IServiceProvider>[] configure)
        => new(options, configure, new ServiceCollection().BuildServiceProvider(),
            new ConnectionRefreshTelemetry("test", new ConnectionRefreshMetrics(null), NullLogger.Instance), grpc);

    [Theory]
    [InlineData(true, false)]  // gRPC never redirects: one layer less per call
    [InlineData(false, true)]  // plain HTTP clients keep SocketsHttpHandler's default
    public void Create_RedirectsFollowedOnlyForPlainHttpClients(bool grpc, bool followsRedirects)
    {
        using var handler = Factory(new ConnectionRefreshOptions(), grpc).Create(null);

        Assert.Equal(followsRedirects, handler.AllowAutoRedirect);
    }

    [Fact]
    public void Create_AppliesRefreshSettings()
    {
        var options = new ConnectionRefreshOptions
        {
            KeepAlivePingDelay = TimeSpan.FromSeconds(15),
            KeepAlivePingTimeout = TimeSpan.FromSeconds(5),
            KeepAlivePingPolicy = HttpKeepAlivePingPolicy.Always,
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
            ConnectTimeout = TimeSpan.FromSeconds(3),
        };

        using var handler = Factory(options).Create(null);

        Assert.Equal(Timeout.InfiniteTimeSpan, handler.PooledConnectionLifetime);
        Assert.Equal(TimeSpan.FromSeconds(15), handler.KeepAlivePingDelay);
        Assert.Equal(TimeSpan.FromSeconds(5), handler.KeepAlivePingTimeout);
        Assert.Equal(HttpKeepAlivePingPolicy.Always, handler.KeepAlivePingPolicy);
        Assert.Equal(TimeSpan.FromSeconds(30), handler.PooledConnectionIdleTimeout);
        Assert.Equal(TimeSpan.FromSeconds(3), handler.ConnectTimeout);
        Assert.True(handler.EnableMultipleHttp2Connections);
        Assert.NotNull(handler.ConnectCallback);
    }

    [Fact]
    public void Create_ApplicationConfiguration_RunsAfterRefreshSettingsOnEveryHandler()
    {
        var calls = 0;
        var factory = Factory(new ConnectionRefreshOptions(), (h, _) =>
        {
            calls++;
            h.SslOptions.TargetHost = "greeter.internal";
            h.ConnectTimeout = TimeSpan.FromSeconds(1);
        });

        using var first = factory.Create(null);
        using var second = factory.Create(null);

        Assert.Equal(2, calls);
        Assert.Equal("greeter.internal", second.SslOptions.TargetHost);
        Assert.Equal(TimeSpan.FromSeconds(1), second.ConnectTimeout);
    }
}
