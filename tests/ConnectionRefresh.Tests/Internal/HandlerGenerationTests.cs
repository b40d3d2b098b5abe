using ConnectionRefresh.Internal;
using ConnectionRefresh.Tests.Infrastructure;

namespace ConnectionRefresh.Tests.Internal;

/// <summary>
/// The age and request budget of a generation count from its oldest open connection once it has had one (the real
/// connections are in <c>Integration/ReplacedConnectionTests</c>).
/// </summary>
public sealed class HandlerGenerationTests
{
    private static StubGenerations Stubs(Action<ConnectionRefreshOptions>? configure = null)
    {
        var options = new ConnectionRefreshOptions { MaxConnectionAge = TimeSpan.FromSeconds(10), MaxConnectionAgeJitter = 0 };
        configure?.Invoke(options);
        return new StubGenerations(options);
    }

    private static StartResult Start(StubGenerations stubs, HandlerGeneration generation)
    {
        var result = generation.TryStart(stubs.Time.GetTimestamp());
        if (result is StartResult.Use or StartResult.UseAndRetire)
        {
            generation.Release();
        }

        return result;
    }

    [Fact]
    public void ConnectionOpened_FirstOfTheGeneration_KeepsItsStaggeredAge()
    {
        // Slot 0 of 2 first lives half an age: its first connection must not restart that.
        var stubs = Stubs(o => o.ConnectionsPerEndpoint = 2);
        var generation = stubs.Factory.Create(0, firstOfSlot: true);

        stubs.Time.Advance(TimeSpan.FromSeconds(1));
        generation.ConnectionOpened();
        stubs.Time.Advance(TimeSpan.FromSeconds(4));

        Assert.Equal(StartResult.RetireByAge, Start(stubs, generation));
    }

    [Fact]
    public void ConnectionClosed_OldestWhileANewerIsOpen_AgeCountsFromTheNewer()
    {
        var stubs = Stubs();
        var generation = stubs.Factory.Create(0, firstOfSlot: false);
        var first = generation.ConnectionOpened();
        stubs.Time.Advance(TimeSpan.FromSeconds(6));
        generation.ConnectionOpened(); // after the server's GOAWAY, while the first drains
        stubs.Time.Advance(TimeSpan.FromSeconds(1));
        generation.ConnectionClosed(first);

        stubs.Time.Advance(TimeSpan.FromSeconds(8.9)); // 15.9 s: 9.9 s after the newer one opened
        Assert.Equal(StartResult.Use, Start(stubs, generation));
        stubs.Time.Advance(TimeSpan.FromSeconds(0.1));
        Assert.Equal(StartResult.RetireByAge, Start(stubs, generation));
    }

    [Fact]
    public void ConnectionOpened_WhileAnOlderIsOpen_ChangesNothing()
    {
        // HTTP/1.1, or past the server's stream limit: more connections next to the first. Neither their opening nor
        // their closing makes the first one live longer.
        var stubs = Stubs();
        var generation = stubs.Factory.Create(0, firstOfSlot: false);
        generation.ConnectionOpened();
        stubs.Time.Advance(TimeSpan.FromSeconds(6));
        var second = generation.ConnectionOpened();
        var third = generation.ConnectionOpened();
        generation.ConnectionClosed(third);
        generation.ConnectionClosed(second);
        Assert.Equal(1, generation.OpenConnections);

        stubs.Time.Advance(TimeSpan.FromSeconds(4));
        Assert.Equal(StartResult.RetireByAge, Start(stubs, generation));
    }

    [Fact]
    public void ConnectionOpened_AfterEveryConnectionClosed_AgeCountsFromTheNewConnection()
    {
        var stubs = Stubs();
        var generation = stubs.Factory.Create(0, firstOfSlot: false);
        generation.ConnectionClosed(generation.ConnectionOpened()); // closed by the server, or idle
        stubs.Time.Advance(TimeSpan.FromSeconds(6));
        generation.ConnectionOpened();

        stubs.Time.Advance(TimeSpan.FromSeconds(9.9));
        Assert.Equal(StartResult.Use, Start(stubs, generation));
        stubs.Time.Advance(TimeSpan.FromSeconds(0.1));
        Assert.Equal(StartResult.RetireByAge, Start(stubs, generation));
    }

    [Fact]
    public void ConnectionOpened_Replacement_BudgetCountsTheCallsThatMayWaitForIt()
    {
        var stubs = Stubs(o => o.MaxRequestsPerConnection = 5);
        var generation = stubs.Factory.Create(0, firstOfSlot: false);
        var first = generation.ConnectionOpened();
        for (var i = 0; i < 2; i++)
        {
            Assert.Equal(StartResult.Use, Start(stubs, generation));
        }

        // A call runs on the first connection when the server closes it; the next call opens the replacement. Either of
        // the two may end up on it (the client cannot tell), so both count against its 5.
        Assert.Equal(StartResult.Use, generation.TryStart(stubs.Time.GetTimestamp()));
        Assert.Equal(StartResult.Use, generation.TryStart(stubs.Time.GetTimestamp()));
        generation.ConnectionOpened();
        generation.ConnectionClosed(first);
        generation.Release();
        generation.Release();

        Assert.Equal([StartResult.Use, StartResult.Use, StartResult.UseAndRetire], [Start(stubs, generation), Start(stubs, generation), Start(stubs, generation)]);
    }

    [Fact]
    public void ConnectionClosed_AfterRetirement_ChangesNothing()
    {
        var stubs = Stubs();
        var generation = stubs.Factory.Create(0, firstOfSlot: false);
        var first = generation.ConnectionOpened();
        generation.ConnectionOpened();
        generation.Retire(RetirementReason.Age);

        generation.ConnectionClosed(first);

        Assert.Equal(StartResult.Gone, generation.TryStart(stubs.Time.GetTimestamp()));
    }
}
