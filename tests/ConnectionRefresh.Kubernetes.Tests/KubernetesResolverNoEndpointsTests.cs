using ConnectionRefresh.Kubernetes.Tests.Fakes;
using ConnectionRefresh.Protos;
using Grpc.Core;

namespace ConnectionRefresh.Kubernetes.Tests;

/// <summary>
/// End to end (fake API server, real Kestrel pods, a real channel with round_robin): while the Service has no usable
/// endpoint, calls fail with a status that names the service, namespace and port and says why, and the channel behaves as
/// it did with an empty address list: fail fast without wait-for-ready, wait with it, recover at once.
/// </summary>
public sealed class KubernetesResolverNoEndpointsTests
{
    private const string Names = "service 'greeter' in namespace 'default'";

    // How soon calls must go out once a pod is ready (see WaitForReadyCall_NoPodReady_...): generous for a loaded 2-core
    // machine, short of a grown reconnect backoff.
    private static readonly TimeSpan RecoveryBound = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task Call_NoEndpointSliceForTheService_FailsWithUnavailableSayingNoSliceIsLabelled()
    {
        await using var cluster = await ResolverTestCluster.StartAsync(podCount: 1);

        var error = await Assert.ThrowsAsync<RpcException>(() => CallAsync(cluster));

        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.Contains($"{Names}, port 'grpc': no EndpointSlice is labelled kubernetes.io/service-name=greeter", error.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("Does Service 'greeter' exist in namespace 'default'?", error.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Call_NoPodReady_FailsWithUnavailableSayingNoneIsReady()
    {
        await using var cluster = await ResolverTestCluster.StartAsync(podCount: 2);
        PublishNotReady(cluster);

        var error = await FailureMentioningAsync(cluster, "none of them ready");

        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.Contains($"{Names}, port 'grpc': its EndpointSlices list 2 endpoint(s), none of them ready", error.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Call_SlicesListNoEndpoints_FailsWithUnavailableSayingNoPodMatches()
    {
        await using var cluster = await ResolverTestCluster.StartAsync(podCount: 1);
        cluster.Api.Apply("default", Slices.Create("greeter-a", "greeter", [], ("grpc", cluster.Pods.Port)));

        var error = await FailureMentioningAsync(cluster, "list no endpoints");

        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.Contains($"{Names}, port 'grpc': its 1 EndpointSlice(s) list no endpoints: no pod matches the Service's selector", error.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Call_NoSliceHasTheTargetsPort_FailsWithUnavailableListingThePorts()
    {
        await using var cluster = await ResolverTestCluster.StartAsync(podCount: 1, target: "kubernetes:///greeter.default:grcp");
        cluster.PublishReady(cluster.Pods.Ips);

        var error = await FailureMentioningAsync(cluster, "matching TCP port");

        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.Contains($"{Names}, port 'grcp': no EndpointSlice of the Service has a matching TCP port (their ports: grpc ({cluster.Pods.Port}))",
            error.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task WaitForReadyCall_NoPodReady_WaitsAndSucceedsOnceAPodIsReadyWithoutRelisting()
    {
        await using var cluster = await ResolverTestCluster.StartAsync(podCount: 2);
        PublishNotReady(cluster);
        // The failure is published (a call without wait-for-ready reports it) before the wait-for-ready call starts.
        await FailureMentioningAsync(cluster, "none of them ready");
        var lists = cluster.Api.ListCount;

        var waiting = cluster.Client.SayHelloAsync(new HelloRequest { Name = "wait" },
            new CallOptions(deadline: DateTime.UtcNow.AddSeconds(60)).WithWaitForReady()).ResponseAsync;
        // Still failing fast for others while the wait-for-ready call waits: it did not take the failure as its answer.
        await FailureMentioningAsync(cluster, "none of them ready");
        Assert.False(waiting.IsCompleted, $"the wait-for-ready call completed while no pod was ready: {waiting.Exception?.InnerException?.Message}");

        cluster.PublishReady(cluster.Pods.Ips.Take(1));
        var elapsed = await Poll.UntilAsync(() => waiting.IsCompleted, "the wait-for-ready call completed");

        Assert.Equal(cluster.Pods.Ips[0], (await waiting).Instance);
        // No backoff between the good result and the call: it goes out as soon as the subchannel connects (~10-100 ms
        // here). The bound is generous for a loaded machine, yet below what a reconnect backoff that had grown during the
        // failures would take (grpc-dotnet's grows by 1.6x per failure from 1 s, up to 120 s).
        Assert.True(elapsed < RecoveryBound, $"the wait-for-ready call completed {elapsed} after a pod became ready");
        // The failure made grpc-dotnet ask for no re-resolution the live watch could not answer.
        Assert.Equal(lists, cluster.Api.ListCount);
    }

    [Fact]
    public async Task Calls_CauseChangesThenPodsReady_StatusFollowsTheCauseAndCallsRecoverAtOnce()
    {
        await using var cluster = await ResolverTestCluster.StartAsync(podCount: 2);
        await FailureMentioningAsync(cluster, "no EndpointSlice is labelled");

        // Still no endpoint, for another reason: the status says the new one.
        PublishNotReady(cluster);
        await FailureMentioningAsync(cluster, "none of them ready");

        cluster.PublishReady(cluster.Pods.Ips);
        var elapsed = await Poll.UntilAsync(async () =>
        {
            try
            {
                await CallAsync(cluster);
                return true;
            }
            catch (RpcException ex) when (ex.StatusCode == StatusCode.Unavailable)
            {
                return false;
            }
        }, "calls succeed once the pods are ready");
        Assert.True(elapsed < RecoveryBound, $"calls succeeded {elapsed} after the pods became ready");
    }

    private static void PublishNotReady(ResolverTestCluster cluster) =>
        cluster.Api.Apply("default", Slices.Create("greeter-a", "greeter", cluster.Pods.Ips.Select(ip => (ip, false)), ("grpc", cluster.Pods.Port)));

    private static async Task<HelloReply> CallAsync(ResolverTestCluster cluster) =>
        await cluster.Client.SayHelloAsync(new HelloRequest { Name = "no-endpoints" }, deadline: DateTime.UtcNow.AddSeconds(30));

    /// <summary>Calls until one fails with a detail containing <paramref name="text"/> (the resolver's result arrives asynchronously).</summary>
    private static async Task<RpcException> FailureMentioningAsync(ResolverTestCluster cluster, string text)
    {
        RpcException? last = null;
        await Poll.UntilAsync(async () =>
        {
            try
            {
                await CallAsync(cluster);
                return false;
            }
            catch (RpcException ex)
            {
                last = ex;
                return ex.Status.Detail.Contains(text, StringComparison.Ordinal);
            }
        }, $"a call fails with a status mentioning '{text}'");
        return last!;
    }
}
