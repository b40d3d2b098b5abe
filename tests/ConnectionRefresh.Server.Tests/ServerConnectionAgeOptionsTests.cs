using ConnectionRefresh.Server.Internal;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Server.Tests;

public sealed class ServerConnectionAgeOptionsTests
{
    private static IConfigurationRoot Config(params (string Key, string Value)[] values) =>
        new ConfigurationBuilder()
            .AddInMemoryCollection(values.Select(v => new KeyValuePair<string, string?>(v.Key, v.Value)))
            .Build();

    [Fact]
    public void Constructor_Defaults_AreTheDocumentedValues()
    {
        var options = new ServerConnectionAgeOptions();

        Assert.Equal(TimeSpan.FromMinutes(5), options.MaxConnectionAge);
        Assert.Equal(0.1, options.MaxConnectionAgeJitter);
        Assert.Equal(Timeout.InfiniteTimeSpan, options.MaxConnectionAgeGrace);
        Assert.Equal(Timeout.InfiniteTimeSpan, options.MaxConnectionIdle);
        Assert.Empty(ServerConnectionAgeOptionsValidator.GetFailures(options));
    }

    [Fact]
    public void AddServerConnectionAge_ConfigurationSection_BindsAllKeys()
    {
        var configuration = Config(
            ("ConnectionRefresh:Server:MaxConnectionAge", "00:02:00"),
            ("ConnectionRefresh:Server:MaxConnectionAgeJitter", "0.2"),
            ("ConnectionRefresh:Server:MaxConnectionAgeGrace", "00:00:30"),
            ("ConnectionRefresh:Server:MaxConnectionIdle", "00:10:00"));
        using var services = new ServiceCollection()
            .AddSingleton<IConfiguration>(configuration)
            .AddServerConnectionAge()
            .BuildServiceProvider();

        var options = services.GetRequiredService<IOptions<ServerConnectionAgeOptions>>().Value;

        Assert.Equal(TimeSpan.FromMinutes(2), options.MaxConnectionAge);
        Assert.Equal(0.2, options.MaxConnectionAgeJitter);
        Assert.Equal(TimeSpan.FromSeconds(30), options.MaxConnectionAgeGrace);
        Assert.Equal(TimeSpan.FromMinutes(10), options.MaxConnectionIdle);
    }

    [Theory]
    [InlineData("MaxConnectionAge", "00:00:00.5000000", "ConnectionRefresh:Server:MaxConnectionAge is 00:00:00.5000000; allowed: 00:00:01 to 1.00:00:00, or -00:00:00.0010000 (infinite, off).")]
    [InlineData("MaxConnectionAge", "2.00:00:00", "ConnectionRefresh:Server:MaxConnectionAge is 2.00:00:00; allowed: 00:00:01 to 1.00:00:00")]
    [InlineData("MaxConnectionAgeGrace", "-00:00:05", "ConnectionRefresh:Server:MaxConnectionAgeGrace is -00:00:05; allowed: 00:00:00 to 1.00:00:00")]
    [InlineData("MaxConnectionIdle", "00:00:00.1000000", "ConnectionRefresh:Server:MaxConnectionIdle is 00:00:00.1000000; allowed: 00:00:01 to 1.00:00:00")]
    [InlineData("MaxConnectionAgeJitter", "0.7", "ConnectionRefresh:Server:MaxConnectionAgeJitter is 0.7; allowed: 0 to 0.5.")]
    [InlineData("MaxConnectionAgeJitter", "-0.1", "ConnectionRefresh:Server:MaxConnectionAgeJitter is -0.1; allowed: 0 to 0.5.")]
    public void AddServerConnectionAge_ValueOutOfRange_FailsAtStartWithKeyValueAndRange(string key, string value, string expected)
    {
        using var services = new ServiceCollection()
            .AddSingleton<IConfiguration>(Config(("ConnectionRefresh:Server:" + key, value)))
            .AddServerConnectionAge()
            .BuildServiceProvider();

        // What the host runs at start-up for ValidateOnStart.
        var ex = Assert.Throws<OptionsValidationException>(() => services.GetRequiredService<IStartupValidator>().Validate());

        Assert.Contains(expected, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AddServerConnectionAge_SeveralBadValues_ReportsEveryOne()
    {
        using var services = new ServiceCollection()
            .AddServerConnectionAge(o =>
            {
                o.MaxConnectionAge = TimeSpan.Zero;
                o.MaxConnectionAgeJitter = double.NaN;
            })
            .BuildServiceProvider();

        var ex = Assert.Throws<OptionsValidationException>(() => services.GetRequiredService<IStartupValidator>().Validate());

        Assert.Equal(2, ex.Failures.Count());
        Assert.Contains("ServerConnectionAgeOptions.MaxConnectionAge is 00:00:00;", ex.Message, StringComparison.Ordinal);
        Assert.Contains("ServerConnectionAgeOptions.MaxConnectionAgeJitter is NaN;", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AddServerConnectionAge_ConfigurationAndBadValueInCode_FailsNamingTheCodeSettingNotTheKey()
    {
        // appsettings.json holds a good value; the configure action overrides it with a bad one.
        using var services = new ServiceCollection()
            .AddSingleton<IConfiguration>(Config(("ConnectionRefresh:Server:MaxConnectionAge", "00:02:00")))
            .AddServerConnectionAge()
            .AddServerConnectionAge(o => o.MaxConnectionAge = TimeSpan.Zero)
            .BuildServiceProvider();

        var ex = Assert.Throws<OptionsValidationException>(() => services.GetRequiredService<IStartupValidator>().Validate());

        Assert.Contains("ServerConnectionAgeOptions.MaxConnectionAge is 00:00:00; allowed: 00:00:01 to 1.00:00:00", ex.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("ConnectionRefresh:Server:MaxConnectionAge", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AddServerConnectionAge_SectionAndBadValueInCode_EachFailureNamesWhereItsValueCameFrom()
    {
        var configuration = Config(("Mine:MaxConnectionAgeJitter", "0.9"), ("Mine:MaxConnectionIdle", "00:01:00"));
        using var services = new ServiceCollection()
            .AddSingleton<IConfiguration>(configuration)
            .AddServerConnectionAge(configuration.GetSection("Mine"))
            .Configure<ServerConnectionAgeOptions>(o => o.MaxConnectionIdle = TimeSpan.FromMilliseconds(100))
            .BuildServiceProvider();

        var ex = Assert.Throws<OptionsValidationException>(() => services.GetRequiredService<IStartupValidator>().Validate());

        Assert.Equal(2, ex.Failures.Count());
        Assert.Contains("Mine:MaxConnectionAgeJitter is 0.9; allowed: 0 to 0.5.", ex.Message, StringComparison.Ordinal);
        Assert.Contains("ServerConnectionAgeOptions.MaxConnectionIdle is 00:00:00.1000000; allowed: 00:00:01 to 1.00:00:00", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AddServerConnectionAge_CodeThenConfigurationOverridesWithABadValue_FailsNamingTheKey()
    {
        using var services = new ServiceCollection()
            .AddSingleton<IConfiguration>(Config(("ConnectionRefresh:Server:MaxConnectionAgeGrace", "2.00:00:00")))
            .AddServerConnectionAge(o => o.MaxConnectionAgeGrace = TimeSpan.FromSeconds(30))
            .AddServerConnectionAge()
            .BuildServiceProvider();

        var ex = Assert.Throws<OptionsValidationException>(() => services.GetRequiredService<IStartupValidator>().Validate());

        Assert.Contains("ConnectionRefresh:Server:MaxConnectionAgeGrace is 2.00:00:00; allowed: 00:00:00 to 1.00:00:00", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AddServerConnectionAge_UnknownKey_FailsAtStartNamingTheKey()
    {
        using var services = new ServiceCollection()
            .AddSingleton<IConfiguration>(Config(("ConnectionRefresh:Server:MaxConectionAge", "00:01:00")))
            .AddServerConnectionAge()
            .BuildServiceProvider();

        var ex = Assert.Throws<InvalidOperationException>(() => services.GetRequiredService<IStartupValidator>().Validate());

        Assert.Contains("'ConnectionRefresh:Server:MaxConectionAge'", ex.Message, StringComparison.Ordinal);
        Assert.Contains("MaxConnectionAge, MaxConnectionAgeJitter, MaxConnectionAgeGrace, MaxConnectionIdle", ex.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("MaxConnectionAge", "5 minutes", "ConnectionRefresh:Server:MaxConnectionAge is '5 minutes', which is not a time span; allowed: 00:00:01 to 1.00:00:00, or -00:00:00.0010000 (infinite, off), written as")]
    [InlineData("maxconnectionidle", "2m", "ConnectionRefresh:Server:maxconnectionidle is '2m', which is not a time span; allowed: 00:00:01 to 1.00:00:00, or -00:00:00.0010000 (infinite, off)")]
    [InlineData("MaxConnectionAgeJitter", "ten percent", "ConnectionRefresh:Server:MaxConnectionAgeJitter is 'ten percent', which is not a number; allowed: 0 to 0.5")]
    public void AddServerConnectionAge_UnparsableValue_FailsAtStartNamingKeyValueAndRange(string key, string value, string expected)
    {
        using var services = new ServiceCollection()
            .AddSingleton<IConfiguration>(Config(("ConnectionRefresh:Server:" + key, value)))
            .AddServerConnectionAge()
            .BuildServiceProvider();

        var ex = Assert.Throws<InvalidOperationException>(() => services.GetRequiredService<IStartupValidator>().Validate());

        Assert.Contains(expected, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AddServerConnectionAge_InfiniteValues_AreValid()
    {
        using var services = new ServiceCollection()
            .AddServerConnectionAge(Config(
                ("S:MaxConnectionAge", "-00:00:00.001"),
                ("S:MaxConnectionAgeGrace", "-00:00:00.001"),
                ("S:MaxConnectionIdle", "-00:00:00.001")).GetSection("S"))
            .BuildServiceProvider();

        services.GetRequiredService<IStartupValidator>().Validate();
        Assert.Equal(Timeout.InfiniteTimeSpan, services.GetRequiredService<IOptions<ServerConnectionAgeOptions>>().Value.MaxConnectionAge);
    }

    [Fact]
    public void AddServerConnectionAge_CalledTwice_RegistersCallCountingOnce()
    {
        var services = new ServiceCollection().AddServerConnectionAge().AddServerConnectionAge(o => o.MaxConnectionAgeJitter = 0);

        Assert.Single(services, d => d.ImplementationType == typeof(ConnectionCallCountingStartupFilter));
        Assert.Single(services, d => d.ImplementationType == typeof(ServerConnectionAgeOptionsValidator));
    }

    [Fact]
    public void AddServerConnectionAge_NullArguments_Throw()
    {
        Assert.Throws<ArgumentNullException>(() => ((IServiceCollection)null!).AddServerConnectionAge());
        Assert.Throws<ArgumentNullException>(() => new ServiceCollection().AddServerConnectionAge((Action<ServerConnectionAgeOptions>)null!));
        Assert.Throws<ArgumentNullException>(() => new ServiceCollection().AddServerConnectionAge((IConfigurationSection)null!));
    }

    [Fact]
    public void AddServerConnectionAge_ReturnsTheSameServices()
    {
        var services = new ServiceCollection();

        Assert.Same(services, services.AddServerConnectionAge());
        Assert.Same(services, services.AddServerConnectionAge(_ => { }));
        Assert.Same(services, services.AddServerConnectionAge(Config().GetSection("x")));
    }

    [Fact]
    public void UseServerConnectionAge_ListenOptionsWithBadAction_ThrowsWhenKestrelIsConfigured()
    {
        var kestrel = new KestrelServerOptions { ApplicationServices = new ServiceCollection().BuildServiceProvider() };

        var ex = Assert.Throws<OptionsValidationException>(() =>
            kestrel.Listen(System.Net.IPAddress.Loopback, 0, l => l.UseServerConnectionAge(o => o.MaxConnectionAgeGrace = TimeSpan.FromDays(3))));

        Assert.Contains("ServerConnectionAgeOptions.MaxConnectionAgeGrace is 3.00:00:00", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void UseServerConnectionAge_NoRegistration_BindsTheApplicationsConfigurationSection()
    {
        var kestrel = new KestrelServerOptions
        {
            ApplicationServices = new ServiceCollection()
                .AddSingleton<IConfiguration>(Config(("ConnectionRefresh:Server:MaxConnectionAgeJitter", "0.9")))
                .BuildServiceProvider(),
        };

        var ex = Assert.Throws<OptionsValidationException>(() => kestrel.Listen(System.Net.IPAddress.Loopback, 0, l => l.UseServerConnectionAge()));

        Assert.Contains("ConnectionRefresh:Server:MaxConnectionAgeJitter is 0.9", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void UseServerConnectionAge_IdleWithoutAddServerConnectionAge_ThrowsExplainingWhy()
    {
        var kestrel = new KestrelServerOptions { ApplicationServices = new ServiceCollection().BuildServiceProvider() };

        var ex = Assert.Throws<InvalidOperationException>(() =>
            kestrel.UseServerConnectionAge(o => o.MaxConnectionIdle = TimeSpan.FromMinutes(1)));

        Assert.Contains("services.AddServerConnectionAge(...)", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void UseServerConnectionAge_IdleWithAddServerConnectionAge_IsAccepted()
    {
        var kestrel = new KestrelServerOptions
        {
            ApplicationServices = new ServiceCollection().AddServerConnectionAge(o => o.MaxConnectionIdle = TimeSpan.FromMinutes(1)).BuildServiceProvider(),
        };

        Assert.Same(kestrel, kestrel.UseServerConnectionAge());
        kestrel.Listen(System.Net.IPAddress.Loopback, 0);
    }

    [Fact]
    public void UseServerConnectionAge_ReturnsWhatItWasGiven()
    {
        var kestrel = new KestrelServerOptions { ApplicationServices = new ServiceCollection().BuildServiceProvider() };
        var section = Config(("S:MaxConnectionAge", "00:01:00")).GetSection("S");

        Assert.Same(kestrel, kestrel.UseServerConnectionAge());
        Assert.Same(kestrel, kestrel.UseServerConnectionAge(_ => { }));
        Assert.Same(kestrel, kestrel.UseServerConnectionAge(section));
        kestrel.Listen(System.Net.IPAddress.Loopback, 0, l =>
        {
            Assert.Same(l, l.UseServerConnectionAge());
            Assert.Same(l, l.UseServerConnectionAge(_ => { }));
            Assert.Same(l, l.UseServerConnectionAge(section));
        });
    }

    [Fact]
    public void UseServerConnectionAge_NullArguments_Throw()
    {
        var kestrel = new KestrelServerOptions { ApplicationServices = new ServiceCollection().BuildServiceProvider() };

        Assert.Throws<ArgumentNullException>(() => ((KestrelServerOptions)null!).UseServerConnectionAge());
        Assert.Throws<ArgumentNullException>(() => kestrel.UseServerConnectionAge((Action<ServerConnectionAgeOptions>)null!));
        Assert.Throws<ArgumentNullException>(() => kestrel.UseServerConnectionAge((IConfigurationSection)null!));
        Assert.Throws<ArgumentNullException>(() => ((ListenOptions)null!).UseServerConnectionAge());
        kestrel.Listen(System.Net.IPAddress.Loopback, 0, l =>
        {
            Assert.Throws<ArgumentNullException>(() => l.UseServerConnectionAge((Action<ServerConnectionAgeOptions>)null!));
            Assert.Throws<ArgumentNullException>(() => l.UseServerConnectionAge((IConfigurationSection)null!));
        });
    }
}
