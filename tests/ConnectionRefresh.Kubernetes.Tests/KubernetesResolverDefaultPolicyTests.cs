using ConnectionRefresh.Kubernetes.Internal;
using ConnectionRefresh.Kubernetes.Tests.Fakes;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Grpc.Core;
using Grpc.Net.Client.Configuration;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;

namespace ConnectionRefresh.Kubernetes.Tests;

/// <summary>
/// Which load-balancing policy a <c>kubernetes:///</c> channel ends on: the resolver publishes round_robin with its
/// addresses unless the channel names a policy of its own or sets <c>DisableResolverServiceConfig</c>. Without it,
/// grpc-dotnet's default pick_first sent every call to one pod. Real Kestrel pods (<see cref="SimulatedCluster"/>) published
/// by <see cref="SimulatedKubernetesApi.MirrorEndpoints"/>.
/// </summary>
public sealed class KubernetesResolverDefaultPolicyTests
{
    private const int Pods = 3;
    private const int PickFirstOnlyId = 13;
    private static readonly string Category = typeof(KubernetesResolver).FullName!;

    [Fact]
    public async Task Calls_ChannelWithoutServiceConfig_ReachEveryPod()
    {
        await using var test = await MirroredTest.StartAsync(o => o.ServiceConfig = null);

        await test.CallUntilEveryPodServedAsync();
        Assert.Equal(0, test.Logged(PickFirstOnlyId));
    }

    [Fact]
    public async Task Calls_ExplicitPickFirstConfig_AllGoToOnePod()
    {
        await using var test = await MirroredTest.StartAsync(o =>
            o.ServiceConfig = new ServiceConfig { LoadBalancingConfigs = { new PickFirstConfig() } });

        await test.CallAsync(calls: 60);

        Assert.Single(test.Cluster.Pods, p => p.CallsServed > 0);
        Assert.Equal(0, test.Logged(PickFirstOnlyId));
    }

    [Fact]
    public async Task Calls_DisableResolverServiceConfig_AllGoToOnePodAndAWarningSaysSo()
    {
        await using var test = await MirroredTest.StartAsync(o =>
        {
            o.ServiceConfig = null;
            o.DisableResolverServiceConfig = true;
        });

        await test.CallAsync(calls: 60);

        Assert.Single(test.Cluster.Pods, p => p.CallsServed > 0);
        var warning = Assert.Single(test.Logs.GetSnapshot(), r => r.Id.Id == PickFirstOnlyId);
        Assert.Equal(LogLevel.Warning, warning.Level);
        Assert.Contains("pick_first", warning.Message, StringComparison.Ordinal);
        Assert.Contains("greeter", warning.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Calls_ServiceConfigWithOnlyARetryPolicy_RoundRobinAndTheRetryPolicyApplies()
    {
        // The channel's ServiceConfig names no policy, only a method config: round_robin still comes from the resolver,
        // and the method config (grpc-dotnet reads it from the channel's options alone) still retries.
        var flaky = new FlakyCounter();
        await using var test = await MirroredTest.StartAsync(
            o => o.ServiceConfig = new ServiceConfig
            {
                MethodConfigs =
                {
                    new MethodConfig
                    {
                        Names = { MethodName.Default },
                        RetryPolicy = new RetryPolicy
                        {
                            MaxAttempts = 2,
                            InitialBackoff = TimeSpan.FromMilliseconds(10),
                            MaxBackoff = TimeSpan.FromMilliseconds(10),
                            BackoffMultiplier = 1,
                            RetryableStatusCodes = { StatusCode.Unavailable },
                        },
                    },
                },
            },
            new SimulatedClusterOptions
            {
                Replicas = Pods,
                TerminationGracePeriod = TimeSpan.Zero,
                MapGreeter = false,
                ConfigureServices = services => services.AddSingleton(flaky),
                ConfigureApp = app => app.MapGrpcService<FlakyGreeter>(),
            });

        await test.CallUntilEveryPodServedAsync();
        var reply = await test.Client.SayHelloAsync(new HelloRequest { Name = FlakyGreeter.FailOnce }, deadline: DateTime.UtcNow.AddSeconds(10));

        Assert.Equal(FlakyGreeter.FailOnce, reply.Message);
        Assert.Equal(2, flaky.Attempts); // failed Unavailable once, retried once
        Assert.Equal(1, test.Cluster.Pods.Sum(p => p.CallsFailed));
    }

    [Fact]
    public async Task Calls_FirstResolutionFailsThenEndpointsArrive_ReachEveryPod()
    {
        // A failure cannot carry a service config, so the channel starts on pick_first; the first address list brings
        // round_robin, which takes over once it has a ready pod.
        await using var test = await MirroredTest.StartAsync(o => o.ServiceConfig = null, mirror: false);

        var failure = await Assert.ThrowsAsync<RpcException>(() => test.Client.SayHelloAsync(new HelloRequest { Name = "before" }).ResponseAsync);
        Assert.Equal(StatusCode.Unavailable, failure.StatusCode);
        Assert.Contains("no EndpointSlice", failure.Status.Detail, StringComparison.Ordinal);

        test.Mirror();
        await test.CallUntilEveryPodServedAsync();
    }

    /// <summary>A cluster mirrored into a fake API server and a README client whose channel options <c>configure</c> changes.</summary>
    private sealed class MirroredTest : IAsyncDisposable
    {
        private readonly SimulatedKubernetesApi _api;
        private readonly ServiceAccountDirectory _account;
        private readonly ResolverClient _client;
        private IDisposable? _mirror;

        private MirroredTest(SimulatedCluster cluster, SimulatedKubernetesApi api, ServiceAccountDirectory account, ResolverClient client)
        {
            Cluster = cluster;
            _api = api;
            _account = account;
            _client = client;
        }

        public SimulatedCluster Cluster { get; }

        public Greeter.GreeterClient Client => _client.Client;

        public FakeLogCollector Logs => _client.Services.GetRequiredService<FakeLogCollector>();

        public static async Task<MirroredTest> StartAsync(Action<Grpc.Net.Client.GrpcChannelOptions> configure, SimulatedClusterOptions? options = null,
            bool mirror = true)
        {
            var cluster = await SimulatedCluster.StartAsync(options ?? new SimulatedClusterOptions { Replicas = Pods, TerminationGracePeriod = TimeSpan.Zero });
            var api = await SimulatedKubernetesApi.StartAsync("token-1");
            var account = new ServiceAccountDirectory("token-1");
            var client = ResolverClient.Create(api.Url, account.Path,
                configureServices: services =>
                {
                    services.AddLogging(logging => logging.AddFilter(Category, LogLevel.Debug));
                    services.AddFakeLogging(o => o.FilteredCategories.Add(Category));
                },
                configureClient: builder => builder.ConfigureChannel(configure)); // after the README's ConfigureChannel
            var test = new MirroredTest(cluster, api, account, client);
            if (mirror)
            {
                test.Mirror();
            }

            return test;
        }

        public void Mirror() => _mirror = _api.MirrorEndpoints(Cluster);

        public int Logged(int id) => Logs.GetSnapshot().Count(r => r.Id.Id == id);

        public async Task CallAsync(int calls)
        {
            for (var i = 0; i < calls; i++)
            {
                await Client.SayHelloAsync(new HelloRequest { Name = "call" }, deadline: DateTime.UtcNow.AddSeconds(10));
            }
        }

        /// <summary>Sequential calls until every pod has served one. pick_first would send every call to one pod.</summary>
        public Task CallUntilEveryPodServedAsync() =>
            Poll.UntilAsync(async () =>
            {
                await Client.SayHelloAsync(new HelloRequest { Name = "call" },
                    new CallOptions(deadline: DateTime.UtcNow.AddSeconds(10)).WithWaitForReady());
                return Cluster.Pods.All(p => p.CallsServed > 0);
            }, "calls reach every pod", TimeSpan.FromSeconds(15));

        public async ValueTask DisposeAsync()
        {
            await _client.DisposeAsync();
            _mirror?.Dispose();
            await _api.DisposeAsync();
            await Cluster.DisposeAsync();
            _account.Dispose();
        }
    }

    private sealed class FlakyCounter
    {
        private int _attempts;

        public int Attempts => Volatile.Read(ref _attempts);

        public int Next() => Interlocked.Increment(ref _attempts);
    }

    /// <summary>A Greeter whose first <see cref="FailOnce"/> call, over all pods, fails <c>Unavailable</c>.</summary>
    private sealed class FlakyGreeter(FlakyCounter counter) : Greeter.GreeterBase
    {
        public const string FailOnce = "fail-once";

        public override Task<HelloReply> SayHello(HelloRequest request, ServerCallContext context)
        {
            if (request.Name == FailOnce && counter.Next() == 1)
            {
                throw new RpcException(new Status(StatusCode.Unavailable, "failing once"));
            }

            return Task.FromResult(new HelloReply { Message = request.Name });
        }
    }
}
