using ConnectionRefresh.Protos;
using Grpc.Net.Client;
using Microsoft.Extensions.DependencyInjection;

namespace ConnectionRefresh.Benchmarks.Infrastructure;

/// <summary>The ways of calling a gRPC service that the benchmarks compare.</summary>
internal enum Strategy
{
    /// <summary>A new GrpcChannel and SocketsHttpHandler for every call, disposed after it: the usual workaround.</summary>
    NewConnectionPerCall,

    /// <summary>One GrpcChannel with its default SocketsHttpHandler, held for the whole run: the baseline.</summary>
    BareChannel,

    /// <summary><c>AddGrpcClient</c> with its defaults.</summary>
    GrpcClientDefaults,

    /// <summary><c>AddGrpcClient</c> with its defaults, without HttpClientFactory's logging handlers (<c>RemoveAllLoggers</c>).</summary>
    GrpcClientNoLoggers,

    /// <summary><c>AddGrpcClient().AddConnectionRefresh()</c>, one connection per endpoint.</summary>
    Refresh1,

    /// <summary><c>AddConnectionRefresh</c>, one connection, with HttpClientFactory's logging handlers kept (<c>AddDefaultLogger</c>).</summary>
    Refresh1DefaultLogger,

    /// <summary><c>AddConnectionRefresh</c>, four connections per endpoint.</summary>
    Refresh4,

    /// <summary><c>AddConnectionRefresh</c>, sixteen connections per endpoint.</summary>
    Refresh16,

    /// <summary><c>AddConnectionRefresh</c>, one connection, retired every 1,000 calls.</summary>
    Refresh1Recycle1000,

    /// <summary><c>AddConnectionRefresh</c>, four connections, each retired every 1,000 calls.</summary>
    Refresh4Recycle1000,

    /// <summary>
    /// The per-call reference on a simulated cluster: <c>AddKubernetesResolver()</c> + <c>round_robin</c> over the pods
    /// that a <c>SimulatedKubernetesApi</c> publishes. Built by <see cref="ClusterClients"/>.
    /// </summary>
    KubernetesResolver,
}

internal static class StrategyNames
{
    public static string Label(this Strategy strategy) => strategy switch
    {
        Strategy.NewConnectionPerCall => "new connection per call",
        Strategy.BareChannel => "bare GrpcChannel",
        Strategy.GrpcClientDefaults => "AddGrpcClient defaults",
        Strategy.GrpcClientNoLoggers => "AddGrpcClient, RemoveAllLoggers",
        Strategy.Refresh1DefaultLogger => "AddConnectionRefresh K=1, AddDefaultLogger",
        Strategy.Refresh1 => "AddConnectionRefresh K=1",
        Strategy.Refresh4 => "AddConnectionRefresh K=4",
        Strategy.Refresh16 => "AddConnectionRefresh K=16",
        Strategy.Refresh1Recycle1000 => "AddConnectionRefresh K=1, 1000 calls/conn",
        Strategy.Refresh4Recycle1000 => "AddConnectionRefresh K=4, 1000 calls/conn",
        Strategy.KubernetesResolver => "AddKubernetesResolver + round_robin (per call)",
        _ => strategy.ToString(),
    };
}

/// <summary>A client built for one strategy; <see cref="CallAsync"/> makes one unary call.</summary>
internal abstract class GreeterTarget : IAsyncDisposable
{
    public abstract Task<HelloReply> CallAsync(HelloRequest request, CancellationToken cancellationToken = default);

    public abstract ValueTask DisposeAsync();

    /// <summary>Builds the client of <paramref name="strategy"/> for <paramref name="address"/>.</summary>
    /// <param name="thumbprint">For https addresses: the one server certificate to accept.</param>
    /// <param name="configure">Changes to the refresh options (balance runs shorten the connection age).</param>
    public static GreeterTarget Create(Strategy strategy, Uri address, string? thumbprint, Action<ConnectionRefreshOptions>? configure = null) => strategy switch
    {
        Strategy.NewConnectionPerCall => new PerCallTarget(address, thumbprint),
        Strategy.BareChannel => new ChannelTarget(BareChannel(address, thumbprint)),
        Strategy.GrpcClientDefaults => ServiceProviderTarget.ForAddress(address, thumbprint, refresh: null),
        Strategy.GrpcClientNoLoggers => ServiceProviderTarget.ForAddress(address, thumbprint, refresh: null, b => b.RemoveAllLoggers()),
        Strategy.Refresh1DefaultLogger => Refresh(address, thumbprint, 1, null, configure, b => b.AddDefaultLogger()),
        Strategy.Refresh1 => Refresh(address, thumbprint, 1, null, configure),
        Strategy.Refresh4 => Refresh(address, thumbprint, 4, null, configure),
        Strategy.Refresh16 => Refresh(address, thumbprint, 16, null, configure),
        Strategy.Refresh1Recycle1000 => Refresh(address, thumbprint, 1, 1000, configure),
        Strategy.Refresh4Recycle1000 => Refresh(address, thumbprint, 4, 1000, configure),
        _ => throw new ArgumentOutOfRangeException(nameof(strategy), strategy, "Not a strategy for one address."),
    };

    private static ServiceProviderTarget Refresh(
        Uri address, string? thumbprint, int connections, int? maxRequests, Action<ConnectionRefreshOptions>? configure, Action<IHttpClientBuilder>? logging = null) =>
        ServiceProviderTarget.ForAddress(address, thumbprint, options =>
        {
            options.ConnectionsPerEndpoint = connections;
            options.MaxRequestsPerConnection = maxRequests;
            configure?.Invoke(options);
        }, logging);

    /// <summary>
    /// A GrpcChannel as an application would create one. Over h2c exactly <c>GrpcChannel.ForAddress(address)</c>;
    /// over TLS the same SocketsHttpHandler that GrpcChannel would create, plus the certificate check.
    /// </summary>
    public static GrpcChannel BareChannel(Uri address, string? thumbprint) => thumbprint is null
        ? GrpcChannel.ForAddress(address)
        : GrpcChannel.ForAddress(address, new GrpcChannelOptions { HttpHandler = NewHandler(thumbprint), DisposeHttpClient = true });

    public static SocketsHttpHandler NewHandler(string? thumbprint)
    {
        var handler = new SocketsHttpHandler { EnableMultipleHttp2Connections = true };
        AcceptCertificate(handler, thumbprint);
        return handler;
    }

    public static void AcceptCertificate(SocketsHttpHandler handler, string? thumbprint)
    {
        if (thumbprint is not null)
        {
            handler.SslOptions.RemoteCertificateValidationCallback = BenchServer.Accept(thumbprint);
        }
    }
}

/// <summary>One channel held for the whole run.</summary>
internal sealed class ChannelTarget(GrpcChannel channel) : GreeterTarget
{
    private readonly Greeter.GreeterClient _client = new(channel);

    public override Task<HelloReply> CallAsync(HelloRequest request, CancellationToken cancellationToken = default)
        => _client.SayHelloAsync(request, cancellationToken: cancellationToken).ResponseAsync;

    public override ValueTask DisposeAsync()
    {
        channel.Dispose();
        return ValueTask.CompletedTask;
    }
}

/// <summary>
/// A client from <c>AddGrpcClient</c>, resolved once and held (the common singleton use), with or without
/// <c>AddConnectionRefresh</c>. The service provider stands for one client replica (one pod of the caller).
/// </summary>
internal sealed class ServiceProviderTarget(ServiceProvider services) : GreeterTarget
{
    private readonly Greeter.GreeterClient _client = services.GetRequiredService<Greeter.GreeterClient>();

    /// <param name="logging">Adds or removes HttpClientFactory's per-request logging handlers, after the rest.</param>
    public static ServiceProviderTarget ForAddress(
        Uri address, string? thumbprint, Action<ConnectionRefreshOptions>? refresh, Action<IHttpClientBuilder>? logging = null)
    {
        var services = new ServiceCollection();
        var builder = services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = address);
        if (refresh is null)
        {
            if (thumbprint is not null)
            {
                // Configure Grpc.Net.ClientFactory's own primary handler in place, keeping its defaults.
                builder.ConfigurePrimaryHttpMessageHandler((handler, _) => AcceptCertificate((SocketsHttpHandler)handler, thumbprint));
            }
        }
        else
        {
            builder.AddConnectionRefresh(refresh)
                .ConfigureConnectionRefreshHandler((handler, _) => AcceptCertificate(handler, thumbprint));
        }

        logging?.Invoke(builder);
        return new ServiceProviderTarget(services.BuildServiceProvider());
    }

    public override Task<HelloReply> CallAsync(HelloRequest request, CancellationToken cancellationToken = default)
        => _client.SayHelloAsync(request, cancellationToken: cancellationToken).ResponseAsync;

    public override ValueTask DisposeAsync() => services.DisposeAsync();
}

/// <summary>The status quo: dial, call, hang up. Every call pays TCP (+ TLS) and HTTP/2 set-up.</summary>
internal sealed class PerCallTarget(Uri address, string? thumbprint) : GreeterTarget
{
    public override async Task<HelloReply> CallAsync(HelloRequest request, CancellationToken cancellationToken = default)
    {
        using var channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions { HttpHandler = NewHandler(thumbprint), DisposeHttpClient = true });
        return await new Greeter.GreeterClient(channel).SayHelloAsync(request, cancellationToken: cancellationToken).ResponseAsync.ConfigureAwait(false);
    }

    public override ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
