using ConnectionRefresh.Kubernetes.Tests.Fakes;

namespace ConnectionRefresh.Kubernetes.Tests;

/// <summary>The grpc-dotnet Resolver contract around Start, Refresh and Dispose; the API is an in-memory script.</summary>
public sealed class KubernetesResolverLifecycleTests
{
    [Fact]
    public async Task Dispose_ListAnsweredAfterDispose_ListenerNotCalledAgain()
    {
        // grpc-dotnet disposes the resolver, then the balancer: a result published after Dispose would make the disposed
        // channel's balancer create subchannels (and open connections nobody closes).
        using var list = new HeldList(ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)));
        var client = new ScriptedEndpointSliceClient { OnList = list.Answer };
        using var harness = new ResolverHarness(client);
        await Poll.UntilAsync(() => list.InFlight, "the LIST is in flight");

        harness.Resolver.Dispose();
        list.Release();

        await Poll.WithTimeout(harness.Resolver.Completion, "the resolver loop to end");
        Assert.Empty(harness.Results);
    }

    [Fact]
    public async Task Refresh_RightAfterStartWhileTheFirstListRuns_SatisfiedByThatListAndTheWatchStarts()
    {
        // grpc-dotnet's ConnectionManager calls Start(listener) and then Refresh() at once; the loop may already be listing.
        var time = new CountingTimeProvider();
        using var list = new HeldList(ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)));
        var client = new ScriptedEndpointSliceClient { OnList = list.Answer };
        using var harness = new ResolverHarness(client, time: time, random: () => 0.5);
        await Poll.UntilAsync(() => list.InFlight, "the first LIST is in flight");

        harness.Resolver.Refresh();
        list.Release();

        // The fake clock never moves: a relist for that Refresh() would wait out the minimum refresh interval first.
        await Poll.UntilAsync(() => client.Watches == 1, "watching right after the first LIST");
        Assert.Equal(1, client.Lists);
        Assert.Single(harness.Results);
    }

    [Fact]
    public void Refresh_AfterDispose_ThrowsObjectDisposed()
    {
        using var harness = new ResolverHarness(new ScriptedEndpointSliceClient());
        harness.Resolver.Dispose();

        Assert.Throws<ObjectDisposedException>(() => harness.Resolver.Refresh());
    }
}
