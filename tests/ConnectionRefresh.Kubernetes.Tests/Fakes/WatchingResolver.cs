using ConnectionRefresh.Kubernetes.Internal;
using k8s;
using Microsoft.Extensions.Logging.Testing;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>
/// A started <see cref="KubernetesResolver"/> on a fake clock whose scripted API lists one slice (greeter, 10.0.0.1:8080),
/// returned once it watches with its resync timer armed (the only timer so far): the arrange step of the timing tests that
/// then move the clock, ask for refreshes or write watch events. Counting timers lets a test know a delay is armed.
/// </summary>
internal sealed class WatchingResolver : IDisposable
{
    private readonly ResolverHarness _harness;

    private WatchingResolver(KubernetesResolverOptions? options)
    {
        _harness = new ResolverHarness(Client, options: options, time: Time, random: () => 0.5, logger: Logger);
    }

    public CountingTimeProvider Time { get; } = new();

    public FakeLogger Logger { get; } = new();

    public ScriptedEndpointSliceClient Client { get; } = new()
    {
        OnList = _ => ScriptedEndpointSliceClient.Snapshot("10", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080)),
    };

    public KubernetesResolver Resolver => _harness.Resolver;

    /// <param name="options">The test's options; null: the defaults.</param>
    public static async Task<WatchingResolver> StartAsync(KubernetesResolverOptions? options = null)
    {
        var watching = new WatchingResolver(options);
        try
        {
            await Poll.UntilAsync(() => watching.Client.Watches == 1 && watching.Time.TimersCreated == 1, "watching with the resync timer armed");
            return watching;
        }
        catch
        {
            watching.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Writes an event to the current watch and waits for its effect: proof that the watch still runs. A relist would make
    /// the event arrive only through a new watch, after the LIST the test then sees counted.
    /// </summary>
    public async Task AssertTheSameWatchDeliversAsync(string addedIp)
    {
        var slice = Slices.Ready("b", "greeter", [addedIp], 8080);
        slice.Metadata.ResourceVersion = "20";
        Client.Events.Writer.TryWrite(new EndpointSliceEvent(WatchEventType.Added, slice));
        await Poll.UntilAsync(() => _harness.LastAddresses?.Contains($"{addedIp}:8080") == true, $"the watch delivered {addedIp}");
    }

    public void Dispose() => _harness.Dispose();
}
