using System.Net;
using System.Text;
using ConnectionRefresh.Internal;
using Grpc.Core;
using Grpc.Net.Client;
using Grpc.Net.Client.Configuration;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Tests;

public sealed class ConnectionRefreshHttpClientBuilderExtensionsTests
{
    /// <summary>The smallest type AddGrpcClient can create: it only keeps its CallInvoker.</summary>
    public sealed class TestClient(CallInvoker invoker)
    {
        public CallInvoker Invoker { get; } = invoker;
    }

    private sealed class MarkerHandler : DelegatingHandler;

    private static IHttpClientBuilder GrpcClient(IServiceCollection services, string address = "http://greeter:5000")
        => services.AddGrpcClient<TestClient>(o => o.Address = new Uri(address));

    private static HttpMessageHandler BuildChain(IServiceProvider services, string name)
        => services.GetRequiredService<IHttpMessageHandlerFactory>().CreateHandler(name);

    private static List<HttpMessageHandler> Walk(HttpMessageHandler handler)
    {
        var chain = new List<HttpMessageHandler> { handler };
        while (handler is DelegatingHandler { InnerHandler: { } inner })
        {
            chain.Add(handler = inner);
        }

        return chain;
    }

    private static void ValidateOnStart(IServiceProvider services)
        => services.GetRequiredService<IStartupValidator>().Validate();

    [Fact]
    public void AddConnectionRefresh_GrpcClient_InstallsPrimaryHandlerBehindUserHandlers()
    {
        var services = new ServiceCollection();
        GrpcClient(services).AddHttpMessageHandler(() => new MarkerHandler()).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        var chain = Walk(BuildChain(provider, nameof(TestClient)));

        Assert.IsType<ConnectionRefreshHandler>(chain[^1]);
        Assert.Contains(chain, h => h is MarkerHandler);
        Assert.True(chain.FindIndex(h => h is MarkerHandler) < chain.Count - 1);
    }

    [Fact]
    public void AddConnectionRefresh_ResolvedClient_CreatesGrpcClient()
    {
        var services = new ServiceCollection();
        GrpcClient(services).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        ValidateOnStart(provider);
        Assert.NotNull(provider.GetRequiredService<TestClient>().Invoker);
    }

    [Fact]
    public void AddConnectionRefresh_PlainHttpClient_InstallsPrimaryHandler()
    {
        var services = new ServiceCollection();
        services.AddHttpClient("plain").AddConnectionRefresh(o => o.ConnectionsPerEndpoint = 2);
        using var provider = services.BuildServiceProvider();

        var primary = Assert.IsType<ConnectionRefreshHandler>(Walk(BuildChain(provider, "plain"))[^1]);
        Assert.Equal(2, primary.Slots.Count);
    }

    [Fact]
    public void AddConnectionRefresh_TwoClients_KeepTheirOwnOptions()
    {
        var services = new ServiceCollection();
        services.AddHttpClient("a").AddConnectionRefresh(o => o.ConnectionsPerEndpoint = 2);
        services.AddHttpClient("b").AddConnectionRefresh(o => o.ConnectionsPerEndpoint = 5);
        using var provider = services.BuildServiceProvider();

        Assert.Equal(2, ((ConnectionRefreshHandler)Walk(BuildChain(provider, "a"))[^1]).Slots.Count);
        Assert.Equal(5, ((ConnectionRefreshHandler)Walk(BuildChain(provider, "b"))[^1]).Slots.Count);
    }

    [Fact]
    public void AddConnectionRefresh_CalledTwice_InstallsOneHandlerAndKeepsBothConfigurations()
    {
        var services = new ServiceCollection();
        services.AddHttpClient("a")
            .AddConnectionRefresh(o => o.ConnectionsPerEndpoint = 3)
            .AddConnectionRefresh(o => o.MaxRequestsPerConnection = 7);
        using var provider = services.BuildServiceProvider();

        var options = provider.GetRequiredService<IOptionsMonitor<ConnectionRefreshOptions>>().Get("a");
        Assert.Equal((3, 7), (options.ConnectionsPerEndpoint, options.MaxRequestsPerConnection));
        Assert.Single(Walk(BuildChain(provider, "a")), h => h is ConnectionRefreshHandler);
    }

    [Fact]
    public void AddConnectionRefresh_DefaultSection_BindsConfiguration()
    {
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["ConnectionRefresh:MaxConnectionAge"] = "00:00:30",
            ["ConnectionRefresh:MaxConnectionAgeJitter"] = "0.2",
            ["ConnectionRefresh:MaxRequestsPerConnection"] = "1000",
            ["ConnectionRefresh:ConnectionsPerEndpoint"] = "4",
            ["ConnectionRefresh:KeepAlivePingDelay"] = "00:00:20",
            ["ConnectionRefresh:KeepAlivePingPolicy"] = "Always",
            ["ConnectionRefresh:DrainTimeout"] = "00:10:00",
        }).Build());
        GrpcClient(services).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        ValidateOnStart(provider);
        var options = provider.GetRequiredService<IOptionsMonitor<ConnectionRefreshOptions>>().Get(nameof(TestClient));
        Assert.Equal(TimeSpan.FromSeconds(30), options.MaxConnectionAge);
        Assert.Equal(0.2, options.MaxConnectionAgeJitter);
        Assert.Equal(1000, options.MaxRequestsPerConnection);
        Assert.Equal(4, options.ConnectionsPerEndpoint);
        Assert.Equal(TimeSpan.FromSeconds(20), options.KeepAlivePingDelay);
        Assert.Equal(HttpKeepAlivePingPolicy.Always, options.KeepAlivePingPolicy);
        Assert.Equal(TimeSpan.FromMinutes(10), options.DrainTimeout);
    }

    [Fact]
    public void AddConnectionRefresh_NoConfiguration_UsesDefaults()
    {
        var services = new ServiceCollection();
        GrpcClient(services).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        var options = provider.GetRequiredService<IOptionsMonitor<ConnectionRefreshOptions>>().Get(nameof(TestClient));
        Assert.Equal(TimeSpan.FromMinutes(2), options.MaxConnectionAge);
        Assert.Equal(1, options.ConnectionsPerEndpoint);
        Assert.Null(options.MaxRequestsPerConnection);
        Assert.Equal(TimeSpan.FromMinutes(5), options.KeepAlivePingDelay);
        Assert.Equal(HttpKeepAlivePingPolicy.WithActiveRequests, options.KeepAlivePingPolicy);
        Assert.Equal(Timeout.InfiniteTimeSpan, options.DrainTimeout);
    }

    [Fact]
    public void AddConnectionRefresh_Section_BindsThatSectionOnly()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["ConnectionRefresh:ConnectionsPerEndpoint"] = "9",
            ["Clients:Greeter:ConnectionsPerEndpoint"] = "3",
        }).Build();
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(configuration);
        GrpcClient(services).AddConnectionRefresh(configuration.GetSection("Clients:Greeter"));
        using var provider = services.BuildServiceProvider();

        Assert.Equal(3, provider.GetRequiredService<IOptionsMonitor<ConnectionRefreshOptions>>().Get(nameof(TestClient)).ConnectionsPerEndpoint);
    }

    /// <summary>A gRPC client with <c>AddConnectionRefresh(section)</c>, the section taken by path from the application's JSON configuration.</summary>
    private static ServiceProvider WithSection(string json, string path)
    {
        var configuration = Json(json);
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(configuration);
        GrpcClient(services).AddConnectionRefresh(configuration.GetSection(path));
        return services.BuildServiceProvider();
    }

    /// <summary>The application's configuration from JSON, as appsettings.json gives it (the real JSON provider).</summary>
    private static IConfigurationRoot Json(string json)
        => new ConfigurationBuilder().AddJsonStream(new MemoryStream(Encoding.UTF8.GetBytes(json))).Build();

    [Fact]
    public void ValidateOnStart_SectionThatDoesNotExist_FailsNamingThePath()
    {
        using var provider = WithSection("""{ "Clients": { "Greeter": { "ConnectionRefresh": { "ConnectionsPerEndpoint": 3 } } } }""", "Clients:Greetr:ConnectionRefresh");

        // Before: bound nothing and ran with the defaults, without a word.
        var failure = Assert.Throws<InvalidOperationException>(() => ValidateOnStart(provider));
        Assert.Contains("'Clients:Greetr:ConnectionRefresh'", failure.Message, StringComparison.Ordinal);
        Assert.Contains("does not exist", failure.Message, StringComparison.Ordinal);
        Assert.Contains("'Clients' has: Greeter.", failure.Message, StringComparison.Ordinal);
        Assert.Contains("AddConnectionRefresh() without a section", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateOnStart_SectionThatDoesNotExistAmongManyEnvironmentValues_NamesTheSectionsFirst()
    {
        // A host's top level holds every environment variable: sorted in with them, the sections were left out of
        // the ten names shown ("The top level has: AWS_CA_BUNDLE, CLI_TELEMETRY_OPTOUT, ... and 44 more.").
        var values = Enumerable.Range(0, 12).ToDictionary(i => $"A_ENV_{i:D2}", _ => (string?)"x");
        values["Logging:LogLevel:Default"] = "Warning";
        values["Clientz:Greeter:ConnectionsPerEndpoint"] = "3";
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(values).Build();
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(configuration);
        GrpcClient(services).AddConnectionRefresh(configuration.GetSection("Clients:Greeter"));
        using var provider = services.BuildServiceProvider();

        var failure = Assert.Throws<InvalidOperationException>(() => ValidateOnStart(provider));
        Assert.Contains("The top level has: Clientz, Logging, A_ENV_00,", failure.Message, StringComparison.Ordinal);
        Assert.Contains(" and 4 more.", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateOnStart_ExistingSectionFromJson_BindsIt()
    {
        using var provider = WithSection("""{ "Clients": { "Greeter": { "ConnectionRefresh": { "ConnectionsPerEndpoint": 3 } } } }""", "Clients:Greeter:ConnectionRefresh");

        ValidateOnStart(provider);
        Assert.Equal(3, provider.GetRequiredService<IOptionsMonitor<ConnectionRefreshOptions>>().Get(nameof(TestClient)).ConnectionsPerEndpoint);
    }

    [Theory]
    [InlineData("""{ "Clients": { "Greeter": { "ConnectionRefresh": {} } } }""")]
    [InlineData("""{ "Clients": { "Greeter": { "ConnectionRefresh": null } } }""")]
    public void ValidateOnStart_SectionWrittenEmpty_UsesDefaults(string json)
    {
        var configuration = Json(json);
        var section = configuration.GetSection("Clients:Greeter:ConnectionRefresh");
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(configuration);
        GrpcClient(services).AddConnectionRefresh(section);
        using var provider = services.BuildServiceProvider();

        // The JSON provider keeps the key with a null value: Exists() is false, yet the parent lists it.
        Assert.False(section.Exists());
        ValidateOnStart(provider);
        Assert.Equal(1, provider.GetRequiredService<IOptionsMonitor<ConnectionRefreshOptions>>().Get(nameof(TestClient)).ConnectionsPerEndpoint);
    }

    [Fact]
    public void ValidateOnStart_EmptySectionOutsideTheApplicationsConfiguration_Fails()
    {
        // Only the application's IConfiguration can show that the empty key is there; a separate one cannot.
        var services = new ServiceCollection();
        GrpcClient(services).AddConnectionRefresh(Json("""{ "ConnectionRefresh": {} }""").GetSection("ConnectionRefresh"));
        using var provider = services.BuildServiceProvider();

        var failure = Assert.Throws<InvalidOperationException>(() => ValidateOnStart(provider));
        Assert.Contains("'ConnectionRefresh'", failure.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("""{ "Logging": {} }""")]
    [InlineData("""{ "ConnectionRefresh": {} }""")]
    public void ValidateOnStart_NoSectionOrEmptyOne_ParameterlessOverloadUsesDefaults(string json)
    {
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(Json(json));
        GrpcClient(services).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        ValidateOnStart(provider);
        var options = provider.GetRequiredService<IOptionsMonitor<ConnectionRefreshOptions>>().Get(nameof(TestClient));
        Assert.Equal((1, TimeSpan.FromMinutes(2)), (options.ConnectionsPerEndpoint, options.MaxConnectionAge));
    }

    /// <summary>Sections written as something other than an object, with what the message must say, for both overloads.</summary>
    public static TheoryData<string, string, bool> SectionsThatAreNotObjects()
    {
        var shapes = new (string Json, string Found)[]
        {
            ("\"5m\"", "found the value '5m'"),
            ("3", "found the value '3'"),
            ("true", "found the value 'True'"),
            ("""[ { "MaxConnectionAge": "00:05:00" } ]""", "found an array"),
            ("[ 1, 2 ]", "found an array"),
        };
        var data = new TheoryData<string, string, bool>();
        foreach (var (json, found) in shapes)
        {
            data.Add(json, found, false);
            data.Add(json, found, true);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(SectionsThatAreNotObjects))]
    public void ValidateOnStart_SectionThatIsNotAnObject_FailsNamingPathAndValue(string json, string found, bool bySection)
    {
        var path = bySection ? "Clients:Greeter:ConnectionRefresh" : "ConnectionRefresh";
        var configuration = Json(bySection
            ? $$"""{ "Clients": { "Greeter": { "ConnectionRefresh": {{json}} } } }"""
            : $$"""{ "ConnectionRefresh": {{json}} }""");
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(configuration);
        var client = GrpcClient(services);
        _ = bySection ? client.AddConnectionRefresh(configuration.GetSection(path)) : client.AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        // Before: scalars bound nothing and ran with the defaults; [ {...} ] failed as an unknown setting '...:0'.
        var failure = Assert.Throws<InvalidOperationException>(() => ValidateOnStart(provider));
        Assert.Contains($"ConnectionRefresh section '{path}'", failure.Message, StringComparison.Ordinal);
        Assert.Contains("must be an object of settings", failure.Message, StringComparison.Ordinal);
        Assert.Contains(found, failure.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// A section with an empty value, for both overloads: the environment variable <c>ConnectionRefresh=</c> (the in-memory
    /// provider stands in for it: an empty variable cannot be set from a test, .NET removes it), and JSON "" and [], which
    /// the JSON provider stores as the same empty value.
    /// </summary>
    public static TheoryData<string, bool> SectionsWithAnEmptyValue()
    {
        var data = new TheoryData<string, bool>();
        foreach (var source in new[] { "variable", "\"\"", "[]" })
        {
            data.Add(source, false);
            data.Add(source, true);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(SectionsWithAnEmptyValue))]
    public void ValidateOnStart_SectionWithAnEmptyValue_UsesDefaultsAsTheBinderDoes(string source, bool bySection)
    {
        var path = bySection ? "Clients:Greeter:ConnectionRefresh" : "ConnectionRefresh";
        IConfiguration configuration = source == "variable"
            ? new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { [path] = "" }).Build()
            : Json(bySection
                ? $$"""{ "Clients": { "Greeter": { "ConnectionRefresh": {{source}} } } }"""
                : $$"""{ "ConnectionRefresh": {{source}} }""");
        var services = new ServiceCollection();
        services.AddSingleton(configuration);
        var client = GrpcClient(services);
        _ = bySection ? client.AddConnectionRefresh(configuration.GetSection(path)) : client.AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        // Before: failed start-up ("must be an object of settings; found an empty value"). Microsoft's binder sets nothing.
        ValidateOnStart(provider);
        var options = provider.GetRequiredService<IOptionsMonitor<ConnectionRefreshOptions>>().Get(nameof(TestClient));
        Assert.Equal((1, TimeSpan.FromMinutes(2)), (options.ConnectionsPerEndpoint, options.MaxConnectionAge));
    }

    [Fact]
    public void ValidateOnStart_EmptySectionVariableOverJsonSettings_BindsTheSettings()
    {
        // ConnectionRefresh= in the environment over an appsettings.json section: the empty value hides nothing.
        var configuration = new ConfigurationBuilder()
            .AddJsonStream(new MemoryStream(Encoding.UTF8.GetBytes("""{ "ConnectionRefresh": { "ConnectionsPerEndpoint": 3 } }""")))
            .AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionRefresh"] = "", ["ConnectionRefresh:Server"] = "" })
            .Build();
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(configuration);
        GrpcClient(services).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        ValidateOnStart(provider);
        Assert.Equal(3, provider.GetRequiredService<IOptionsMonitor<ConnectionRefreshOptions>>().Get(nameof(TestClient)).ConnectionsPerEndpoint);
    }

    [Theory]
    [InlineData("MaxConnectionAge", "TimeSpan")]
    [InlineData("MaxConnectionAgeJitter", "Double")]
    [InlineData("ConnectionsPerEndpoint", "Int32")]
    [InlineData("KeepAlivePingPolicy", "HttpKeepAlivePingPolicy")]
    public void ValidateOnStart_EmptySetting_FailsAsTheBinderDoesSayingItIsEmpty(string key, string type)
    {
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionRefresh:" + key] = "" }).Build());
        GrpcClient(services).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        // Microsoft's binder fails too ("Failed to convert configuration value '' ... to type 'System.TimeSpan'"): an empty
        // setting is not "unset". The message says so and how to get the default.
        var failure = Assert.Throws<InvalidOperationException>(() => ValidateOnStart(provider));
        Assert.Contains($"'ConnectionRefresh:{key}' of HTTP client 'TestClient' is empty, which is not a valid {type}", failure.Message, StringComparison.Ordinal);
        Assert.Contains("remove the key", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateOnStart_EmptyMaxRequestsPerConnection_MeansNoLimit()
    {
        // A nullable setting: the binder sets null for "", which here is the default (no limit).
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionRefresh:MaxRequestsPerConnection"] = "" }).Build());
        GrpcClient(services).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        ValidateOnStart(provider);
        Assert.Null(provider.GetRequiredService<IOptionsMonitor<ConnectionRefreshOptions>>().Get(nameof(TestClient)).MaxRequestsPerConnection);
    }

    [Fact]
    public void AddConnectionRefresh_ConfigurationReloaded_KeepsTheSettingsReadAtStartUp()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["ConnectionRefresh:ConnectionsPerEndpoint"] = "2",
        }).Build();
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(configuration);
        services.AddHttpClient("plain").AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();
        ValidateOnStart(provider);
        Assert.Equal(2, Walk(BuildChain(provider, "plain")).OfType<ConnectionRefreshHandler>().Single().Slots.Count);

        configuration["ConnectionRefresh:ConnectionsPerEndpoint"] = "5";
        configuration.Reload();

        // As documented on ConnectionRefreshOptions: read once. Handlers built later (HttpClientFactory rotates those of
        // plain clients) read their settings from this monitor, which keeps the start-up values.
        Assert.Equal(2, provider.GetRequiredService<IOptionsMonitor<ConnectionRefreshOptions>>().Get("plain").ConnectionsPerEndpoint);
    }

    [Theory]
    [InlineData("MaxConnectionAge", "-00:00:05", "ConnectionRefresh:MaxConnectionAge", "-00:00:05")]
    [InlineData("MaxConnectionAgeJitter", "2", "ConnectionRefresh:MaxConnectionAgeJitter", "0 to 0.5")]
    [InlineData("ConnectionsPerEndpoint", "0", "ConnectionRefresh:ConnectionsPerEndpoint", "1 to 64")]
    [InlineData("MaxRequestsPerConnection", "0", "ConnectionRefresh:MaxRequestsPerConnection", "1 to 1000000000")]
    [InlineData("KeepAlivePingTimeout", "00:00:00.5", "ConnectionRefresh:KeepAlivePingTimeout", "00:00:01 to 01:00:00")]
    public void ValidateOnStart_OutOfRange_FailsNamingSettingValueAndRange(string key, string value, string named, string mentioned)
    {
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionRefresh:" + key] = value }).Build());
        GrpcClient(services).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        var failure = Assert.Throws<OptionsValidationException>(() => ValidateOnStart(provider));
        Assert.Contains($"'{named}'", failure.Message, StringComparison.Ordinal);
        Assert.Contains(mentioned, failure.Message, StringComparison.Ordinal);
        Assert.Contains("allowed:", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateOnStart_SectionAndBadValueInCode_FailsNamingTheCodeSettingNotTheKey()
    {
        // appsettings.json holds a good value; the configure action overrides it with a bad one.
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Clients:Greeter:ConnectionRefresh:MaxConnectionAge"] = "00:02:00",
        }).Build();
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(configuration);
        GrpcClient(services)
            .AddConnectionRefresh(configuration.GetSection("Clients:Greeter:ConnectionRefresh"))
            .AddConnectionRefresh(o => o.MaxConnectionAge = TimeSpan.Zero);
        using var provider = services.BuildServiceProvider();

        var failure = Assert.Throws<OptionsValidationException>(() => ValidateOnStart(provider));
        Assert.Contains("ConnectionRefresh setting 'ConnectionRefreshOptions.MaxConnectionAge' of HTTP client 'TestClient' is 00:00:00; " +
            "allowed: 00:00:01 to 1.00:00:00", failure.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("Clients:Greeter", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateOnStart_BadValuesFromConfigurationAndCode_EachFailureNamesWhereItsValueCameFrom()
    {
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["ConnectionRefresh:ConnectionsPerEndpoint"] = "0",
            ["ConnectionRefresh:MaxRequestsPerConnection"] = "100",
        }).Build());
        GrpcClient(services).AddConnectionRefresh().AddConnectionRefresh(o => o.MaxRequestsPerConnection = 0);
        using var provider = services.BuildServiceProvider();

        var failure = Assert.Throws<OptionsValidationException>(() => ValidateOnStart(provider));
        Assert.Equal(2, failure.Failures.Count());
        Assert.Contains("ConnectionRefresh setting 'ConnectionRefresh:ConnectionsPerEndpoint' of HTTP client 'TestClient' is 0; allowed: 1 to 64.",
            failure.Message, StringComparison.Ordinal);
        Assert.Contains("ConnectionRefresh setting 'ConnectionRefreshOptions.MaxRequestsPerConnection' of HTTP client 'TestClient' is 0; " +
            "allowed: 1 to 1000000000, or empty (no limit).", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateOnStart_UnknownKey_FailsNamingTheKey()
    {
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionRefresh:MaxConectionAge"] = "00:01:00" }).Build());
        GrpcClient(services).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        var failure = Assert.Throws<InvalidOperationException>(() => ValidateOnStart(provider));
        Assert.Contains("'ConnectionRefresh:MaxConectionAge'", failure.Message, StringComparison.Ordinal);
        Assert.Contains("MaxConnectionAge", failure.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("MaxConnectionAgeJitter:Value", "0.2")]
    [InlineData("MaxRequestsPerConnection:Value", "100")]
    [InlineData("KeepAlivePingPolicy:Value", "Always")]
    [InlineData("MaxConnectionAge:Minutes", "5")]
    public void ValidateOnStart_SettingWithSubKeys_FailsNamingTheKey(string key, string value)
    {
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionRefresh:" + key] = value }).Build());
        GrpcClient(services).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        // Before: bound in silence as the type's default (jitter 0, no limit) or ignored.
        var failure = Assert.Throws<InvalidOperationException>(() => ValidateOnStart(provider));
        Assert.Contains($"'ConnectionRefresh:{key}'", failure.Message, StringComparison.Ordinal);
        Assert.Contains("single value", failure.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ValidateOnStart_SiblingPackageSections_AreNotClientSettings(bool sectionGiven)
    {
        // Also when the default section is passed by hand: its sub-sections are still where the other packages read.
        var services = new ServiceCollection();
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["ConnectionRefresh:ConnectionsPerEndpoint"] = "2",
            ["ConnectionRefresh:Server:MaxConnectionAge"] = "00:05:00",
            ["ConnectionRefresh:Kubernetes:ResyncInterval"] = "00:05:00",
        }).Build();
        services.AddSingleton<IConfiguration>(configuration);
        _ = sectionGiven ? GrpcClient(services).AddConnectionRefresh(configuration.GetSection("connectionrefresh")) : GrpcClient(services).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        ValidateOnStart(provider);
        Assert.Equal(2, provider.GetRequiredService<IOptionsMonitor<ConnectionRefreshOptions>>().Get(nameof(TestClient)).ConnectionsPerEndpoint);
    }

    [Theory]
    [InlineData("Server")]
    [InlineData("Kubernetes")]
    public void ValidateOnStart_SiblingPackageSectionWithAnEmptyValue_IsNotAClientSetting(string sibling)
    {
        // ConnectionRefresh__Server= in the environment: the sibling package's section, set to nothing.
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["ConnectionRefresh:ConnectionsPerEndpoint"] = "2",
            ["ConnectionRefresh:" + sibling] = "",
        }).Build());
        GrpcClient(services).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        // Before: "Unknown ConnectionRefresh setting 'ConnectionRefresh:Server'".
        ValidateOnStart(provider);
        Assert.Equal(2, provider.GetRequiredService<IOptionsMonitor<ConnectionRefreshOptions>>().Get(nameof(TestClient)).ConnectionsPerEndpoint);
    }

    [Theory]
    [InlineData("Server", "Server:MaxConnectionAge", "00:05:00")]
    [InlineData("Kubernetes", "Kubernetes:ResyncInterval", "00:05:00")]
    [InlineData("Server", "Server", "")]
    public void ValidateOnStart_SiblingSectionNameInASectionOfYourOwn_IsAnUnknownKey(string sibling, string key, string value)
    {
        // Nobody reads 'Clients:Greeter:Server': the server package reads 'ConnectionRefresh:Server' (or the section given to it).
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Clients:Greeter:ConnectionsPerEndpoint"] = "2",
            ["Clients:Greeter:" + key] = value,
        }).Build();
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(configuration);
        GrpcClient(services).AddConnectionRefresh(configuration.GetSection("Clients:Greeter"));
        using var provider = services.BuildServiceProvider();

        // Before: skipped in silence, as in the default section.
        var failure = Assert.Throws<InvalidOperationException>(() => ValidateOnStart(provider));
        Assert.StartsWith($"Unknown ConnectionRefresh setting 'Clients:Greeter:{sibling}' for HTTP client '{nameof(TestClient)}'. Known settings: ",
            failure.Message, StringComparison.Ordinal);
        Assert.Contains($"'ConnectionRefresh:{sibling}'", failure.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("Server", "5m", "ConnectionRefresh.Server", "'ConnectionRefresh:Server:MaxConnectionAge'")]
    [InlineData("Kubernetes", "http://10.0.0.1:6443", "ConnectionRefresh.Kubernetes", "'ConnectionRefresh:Kubernetes:ResyncInterval'")]
    public void ValidateOnStart_ValueWhereASiblingPackagesSectionBelongs_SaysWhatThatKeyIs(string sibling, string value, string package, string example)
    {
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["ConnectionRefresh:" + sibling] = value,
        }).Build());
        GrpcClient(services).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        // Before: "Unknown ConnectionRefresh setting 'ConnectionRefresh:Server'", though it is a known section.
        var failure = Assert.Throws<InvalidOperationException>(() => ValidateOnStart(provider));
        Assert.DoesNotContain("Unknown", failure.Message, StringComparison.Ordinal);
        Assert.Contains($"'ConnectionRefresh:{sibling}'", failure.Message, StringComparison.Ordinal);
        Assert.Contains($"'{value}'", failure.Message, StringComparison.Ordinal);
        Assert.Contains($"section of the {package} package", failure.Message, StringComparison.Ordinal);
        Assert.Contains(example, failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateOnStart_UnparsableValue_FailsNamingKeyValueAndRange()
    {
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionRefresh:MaxConnectionAge"] = "two minutes" }).Build());
        GrpcClient(services).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        var failure = Assert.Throws<InvalidOperationException>(() => ValidateOnStart(provider));
        Assert.Contains("'ConnectionRefresh:MaxConnectionAge'", failure.Message, StringComparison.Ordinal);
        Assert.Contains("'two minutes'", failure.Message, StringComparison.Ordinal);
        Assert.Contains("00:00:01 to 1.00:00:00", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateOnStart_DnsAddress_FailsExplainingTheBalancerConflict()
    {
        var services = new ServiceCollection();
        GrpcClient(services, "dns:///greeter:5000").AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        var failure = Assert.Throws<OptionsValidationException>(() => ValidateOnStart(provider));
        Assert.Contains("dns:///greeter:5000", failure.Message, StringComparison.Ordinal);
        Assert.Contains("http://", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateOnStart_ChannelWithOwnHttpHandler_Fails()
    {
        var services = new ServiceCollection();
        GrpcClient(services).ConfigureChannel(o => o.HttpHandler = new SocketsHttpHandler()).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        var failure = Assert.Throws<OptionsValidationException>(() => ValidateOnStart(provider));
        Assert.Contains("HttpHandler", failure.Message, StringComparison.Ordinal);
    }

    public static TheoryData<string, Action<GrpcChannelOptions>> ReplacedHttpHandlers() => new()
    {
        { "removed", o => o.HttpHandler = null },
        { "another handler wrapped", o => o.HttpHandler = new MarkerHandler { InnerHandler = new SocketsHttpHandler() } },
    };

    [Theory]
    [MemberData(nameof(ReplacedHttpHandlers))]
    public void ValidateOnStart_ChannelReplacesTheHttpHandler_Fails(string replacement, Action<GrpcChannelOptions> configure)
    {
        // Without a handler GrpcChannel creates its own SocketsHttpHandler; either way ours is off the call path.
        _ = replacement;
        var services = new ServiceCollection();
        GrpcClient(services).ConfigureChannel(configure).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        var failure = Assert.Throws<OptionsValidationException>(() => ValidateOnStart(provider));
        Assert.Contains("HttpHandler", failure.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ValidateOnStart_ChannelWrapsTheHttpHandler_PassesAndKeepsItInside(bool refresh)
    {
        // Grpc.Net.ClientFactory hands ConfigureChannel the client's handler chain in HttpHandler: a DelegatingHandler
        // around it keeps every handler of the chain, ours too, on the call path.
        var services = new ServiceCollection();
        var wrappers = new List<MarkerHandler>();
        var builder = GrpcClient(services).ConfigureChannel(o =>
        {
            var wrapper = new MarkerHandler { InnerHandler = o.HttpHandler! };
            wrappers.Add(wrapper);
            o.HttpHandler = wrapper;
        });
        if (refresh)
        {
            builder.AddConnectionRefresh();
        }

        using var provider = services.BuildServiceProvider();

        ValidateOnStart(provider);
        _ = provider.GetRequiredService<TestClient>();

        Assert.Contains(Walk(wrappers[^1]), h => h.GetType().Name == (refresh ? nameof(ConnectionRefreshHandler) : nameof(SocketsHttpHandler)));
    }

    private sealed class ScopedDependency;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ValidateOnStart_ChannelActionUsesLoggerFactoryAndServiceProvider_Passes(bool refresh)
    {
        // Grpc.Net.ClientFactory fills LoggerFactory and ServiceProvider (the channel's scope) before ConfigureChannel runs.
        var services = new ServiceCollection();
        services.AddScoped<ScopedDependency>();
        var seen = new List<(ILogger Logger, ScopedDependency Dependency)>();
        var builder = GrpcClient(services).ConfigureChannel(o =>
            seen.Add((o.LoggerFactory!.CreateLogger("Channel"), o.ServiceProvider!.GetRequiredService<ScopedDependency>())));
        if (refresh)
        {
            builder.AddConnectionRefresh();
        }

        using var provider = services.BuildServiceProvider();

        ValidateOnStart(provider);
        _ = provider.GetRequiredService<TestClient>();

        // Once to create the channel and, with AddConnectionRefresh, once more to validate its options: no more.
        Assert.Equal(refresh ? 2 : 1, seen.Count);
    }

    [Fact]
    public void ValidateOnStart_LoadBalancingServiceConfig_Fails()
    {
        var services = new ServiceCollection();
        GrpcClient(services)
            .ConfigureChannel(o => o.ServiceConfig = new ServiceConfig { LoadBalancingConfigs = { new RoundRobinConfig() } })
            .AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        var failure = Assert.Throws<OptionsValidationException>(() => ValidateOnStart(provider));
        Assert.Contains("round_robin", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateOnStart_ChannelOptionsThatFit_Passes()
    {
        var services = new ServiceCollection();
        GrpcClient(services).ConfigureChannel(o => o.MaxReceiveMessageSize = 1024).AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        ValidateOnStart(provider);
    }

    [Fact]
    public void CreateHandler_PrimaryReplacedAfterwards_FailsWithAdvice()
    {
        var services = new ServiceCollection();
        GrpcClient(services).AddConnectionRefresh().ConfigurePrimaryHttpMessageHandler(() => new SocketsHttpHandler());
        using var provider = services.BuildServiceProvider();

        var failure = Assert.ThrowsAny<InvalidOperationException>(() => BuildChain(provider, nameof(TestClient)));
        Assert.Contains("ConfigureConnectionRefreshHandler", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void CreateHandler_PrimaryWithProxyConfiguredBefore_FailsInsteadOfDroppingIt()
    {
        var services = new ServiceCollection();
        GrpcClient(services)
            .ConfigurePrimaryHttpMessageHandler(() => new SocketsHttpHandler { Proxy = new WebProxy("http://127.0.0.1:3128") })
            .AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        var failure = Assert.ThrowsAny<InvalidOperationException>(() => BuildChain(provider, nameof(TestClient)));
        Assert.Contains("a proxy", failure.Message, StringComparison.Ordinal);
        Assert.Contains("ConfigureConnectionRefreshHandler", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void CreateHandler_PrimaryConfiguredInPlaceAfterwards_FailsNamingTheSetting()
    {
        var services = new ServiceCollection();
        GrpcClient(services).AddConnectionRefresh().ConfigurePrimaryHttpMessageHandler((handler, _) =>
        {
            if (handler is SocketsHttpHandler sockets)
            {
                sockets.UseProxy = false;
            }
        });
        using var provider = services.BuildServiceProvider();

        var failure = Assert.ThrowsAny<InvalidOperationException>(() => BuildChain(provider, nameof(TestClient)));
        Assert.Contains("UseProxy", failure.Message, StringComparison.Ordinal);
        Assert.Contains("ConfigureConnectionRefreshHandler", failure.Message, StringComparison.Ordinal);
    }

    public static TheoryData<string, Action<SocketsHttpHandler>> PrimaryHandlerSettings() => new()
    {
        { "UseProxy", h => h.UseProxy = false },
        { "SslOptions.EnabledSslProtocols", h => h.SslOptions.EnabledSslProtocols = System.Security.Authentication.SslProtocols.Tls13 },
        { "SslOptions.TargetHost", h => h.SslOptions.TargetHost = "greeter.internal" },
        { "MaxConnectionsPerServer", h => h.MaxConnectionsPerServer = 4 },
        { "keepalive pings", h => h.KeepAlivePingDelay = TimeSpan.FromSeconds(30) },
        { "ConnectTimeout", h => h.ConnectTimeout = TimeSpan.FromSeconds(3) },
        { "InitialHttp2StreamWindowSize", h => h.InitialHttp2StreamWindowSize = 1 << 20 },
        { "Expect100ContinueTimeout", h => h.Expect100ContinueTimeout = TimeSpan.FromSeconds(5) },
        { "ResponseDrainTimeout", h => h.ResponseDrainTimeout = TimeSpan.FromSeconds(5) },
        { "MaxResponseDrainSize", h => h.MaxResponseDrainSize = 4096 },
        { "SslOptions.AllowRenegotiation", h => h.SslOptions.AllowRenegotiation = false },
        { "SslOptions.AllowTlsResume", h => h.SslOptions.AllowTlsResume = false },
        { "EnableMultipleHttp3Connections", h => h.EnableMultipleHttp3Connections = true },
    };

    [Theory]
    [MemberData(nameof(PrimaryHandlerSettings))]
    public void CreateHandler_PrimaryWithSettingConfiguredBefore_FailsNamingIt(string named, Action<SocketsHttpHandler> configure)
    {
        var services = new ServiceCollection();
        GrpcClient(services)
            .ConfigurePrimaryHttpMessageHandler(() =>
            {
                var handler = new SocketsHttpHandler { EnableMultipleHttp2Connections = true };
                configure(handler);
                return handler;
            })
            .AddConnectionRefresh();
        using var provider = services.BuildServiceProvider();

        var failure = Assert.ThrowsAny<InvalidOperationException>(() => BuildChain(provider, nameof(TestClient)));
        Assert.Contains(named, failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ConfigureConnectionRefreshHandler_RegistersActionForThatClient()
    {
        var services = new ServiceCollection();
        Action<SocketsHttpHandler, IServiceProvider> configure = (h, _) => h.UseProxy = false;
        GrpcClient(services).AddConnectionRefresh().ConfigureConnectionRefreshHandler(configure);
        using var provider = services.BuildServiceProvider();

        var actions = provider.GetRequiredService<IOptionsMonitor<SocketsHttpHandlerActions>>();
        Assert.Same(configure, Assert.Single(actions.Get(nameof(TestClient)).Actions));
        Assert.Empty(actions.Get("other").Actions);
    }

    [Fact]
    public void AddConnectionRefresh_GrpcAndPlainClients_FollowRedirectsOnlyForPlainOnes()
    {
        var followsRedirects = new Dictionary<string, bool>();
        var services = new ServiceCollection();
        GrpcClient(services).AddConnectionRefresh()
            .ConfigureConnectionRefreshHandler((h, _) => followsRedirects[nameof(TestClient)] = h.AllowAutoRedirect);
        services.AddHttpClient("plain").AddConnectionRefresh()
            .ConfigureConnectionRefreshHandler((h, _) => followsRedirects["plain"] = h.AllowAutoRedirect);
        using var provider = services.BuildServiceProvider();

        foreach (var name in new[] { nameof(TestClient), "plain" })
        {
            // Starting a call on a slot creates its first handler, which runs the configuration.
            var handler = (ConnectionRefreshHandler)Walk(BuildChain(provider, name))[^1];
            handler.Slots[0].Start().Release();
        }

        Assert.False(followsRedirects[nameof(TestClient)]);
        Assert.True(followsRedirects["plain"]);
    }

    [Fact]
    public void Extensions_NullArguments_Throw()
    {
        IHttpClientBuilder builder = new ServiceCollection().AddHttpClient("x");
        Assert.Throws<ArgumentNullException>(() => ConnectionRefreshHttpClientBuilderExtensions.AddConnectionRefresh(null!));
        Assert.Throws<ArgumentNullException>(() => builder.AddConnectionRefresh((Action<ConnectionRefreshOptions>)null!));
        Assert.Throws<ArgumentNullException>(() => builder.AddConnectionRefresh((IConfigurationSection)null!));
        Assert.Throws<ArgumentNullException>(() => builder.ConfigureConnectionRefreshHandler(null!));
    }
}
