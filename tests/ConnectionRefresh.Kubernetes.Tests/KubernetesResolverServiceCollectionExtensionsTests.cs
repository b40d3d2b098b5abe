using ConnectionRefresh.Kubernetes.Internal;
using Grpc.Net.Client.Balancer;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Kubernetes.Tests;

public sealed class KubernetesResolverServiceCollectionExtensionsTests
{
    [Fact]
    public void AddKubernetesResolver_Twice_RegistersOneKubernetesResolverFactory()
    {
        var services = new ServiceCollection();

        var returned = services.AddKubernetesResolver().AddKubernetesResolver();

        Assert.Same(services, returned);
        using var provider = services.BuildServiceProvider();
        var factory = Assert.Single(provider.GetServices<ResolverFactory>());
        Assert.Equal("kubernetes", factory.Name);
    }

    [Fact]
    public void AddKubernetesResolver_NullArguments_Throw()
    {
        Assert.Throws<ArgumentNullException>(() => KubernetesResolverServiceCollectionExtensions.AddKubernetesResolver(null!));
        Assert.Throws<ArgumentNullException>(() => new ServiceCollection().AddKubernetesResolver((Action<KubernetesResolverOptions>)null!));
        Assert.Throws<ArgumentNullException>(() => new ServiceCollection().AddKubernetesResolver((IConfigurationSection)null!));
    }

    [Fact]
    public void Options_FromConfiguration_BoundFromConnectionRefreshKubernetes()
    {
        var options = Build(new()
        {
            ["ConnectionRefresh:Kubernetes:ResyncInterval"] = "00:02:00",
            ["ConnectionRefresh:Kubernetes:IncludeTerminatingEndpoints"] = "true",
            ["ConnectionRefresh:Kubernetes:ApiServer"] = "http://127.0.0.1:8001",
        });

        Assert.Equal(TimeSpan.FromMinutes(2), options.ResyncInterval);
        Assert.True(options.IncludeTerminatingEndpoints);
        Assert.Equal(new Uri("http://127.0.0.1:8001"), options.ApiServer);
        Assert.Equal(TimeSpan.FromSeconds(1), options.InitialBackoff);
    }

    [Fact]
    public void Options_Defaults_AreTheDocumentedOnes()
    {
        var options = new KubernetesResolverOptions();

        Assert.Equal(TimeSpan.FromMinutes(5), options.ResyncInterval);
        Assert.Equal(TimeSpan.FromSeconds(1), options.InitialBackoff);
        Assert.Equal(TimeSpan.FromSeconds(30), options.MaxBackoff);
        Assert.Equal("/var/run/secrets/kubernetes.io/serviceaccount", options.ServiceAccountPath);
        Assert.Null(options.ApiServer);
        Assert.Null(options.KubeconfigPath);
        Assert.False(options.IncludeTerminatingEndpoints);
    }

    [Theory]
    [InlineData("ResyncInterval", "00:00:00.5", "ConnectionRefresh:Kubernetes:ResyncInterval is 00:00:00.5000000; allowed: 00:00:01 to 1.00:00:00.")]
    [InlineData("InitialBackoff", "00:05:00", "ConnectionRefresh:Kubernetes:InitialBackoff is 00:05:00; allowed: 00:00:00.0100000 to 00:01:00.")]
    [InlineData("MaxBackoff", "00:00:00.05", "ConnectionRefresh:Kubernetes:MaxBackoff is 00:00:00.0500000; allowed: 00:00:00.1000000 to 01:00:00.")]
    [InlineData("ApiServer", "ftp://example", "ConnectionRefresh:Kubernetes:ApiServer is 'ftp://example/'; allowed: an absolute http:// or https:// URI.")]
    [InlineData("ServiceAccountPath", " ", "ConnectionRefresh:Kubernetes:ServiceAccountPath is ' '; allowed: a directory path (default '/var/run/secrets/kubernetes.io/serviceaccount').")]
    public void Options_InvalidValue_FailsNamingKeyAndValue(string key, string value, string expected)
    {
        var ex = Assert.Throws<OptionsValidationException>(() => Build(new() { ["ConnectionRefresh:Kubernetes:" + key] = value }));

        Assert.Contains(expected, ex.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("ResyncInterval", "5 minutes",
        "ConnectionRefresh:Kubernetes:ResyncInterval is '5 minutes', which is not a valid TimeSpan; allowed: 00:00:01 to 1.00:00:00, written as [d.]hh:mm:ss[.fffffff] (e.g. 00:05:00 for 5 minutes).")]
    [InlineData("InitialBackoff", "1s",
        "ConnectionRefresh:Kubernetes:InitialBackoff is '1s', which is not a valid TimeSpan; allowed: 00:00:00.0100000 to 00:01:00, written as [d.]hh:mm:ss[.fffffff]")]
    [InlineData("MaxBackoff", "",
        "ConnectionRefresh:Kubernetes:MaxBackoff is '', which is not a valid TimeSpan; allowed: 00:00:00.1000000 to 01:00:00, written as [d.]hh:mm:ss[.fffffff]")]
    [InlineData("IncludeTerminatingEndpoints", "yes",
        "ConnectionRefresh:Kubernetes:IncludeTerminatingEndpoints is 'yes', which is not a valid Boolean; allowed: true or false.")]
    public void Options_UnparsableValue_FailsNamingKeyValueAndRange(string key, string value, string expected)
    {
        var ex = Assert.Throws<OptionsValidationException>(() => Build(new() { ["ConnectionRefresh:Kubernetes:" + key] = value }));

        Assert.Contains(expected, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Options_ConfigurationSectionOverloadUnparsableValue_FailsNamingThatSectionsKey()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["Mine:resyncInterval"] = "5m" }).Build();
        using var provider = new ServiceCollection().AddKubernetesResolver(configuration.GetSection("Mine")).BuildServiceProvider();

        var ex = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IOptions<KubernetesResolverOptions>>().Value);

        // The key as written, the range under the setting's own name.
        Assert.Contains("Mine:resyncInterval is '5m', which is not a valid TimeSpan; allowed: 00:00:01 to 1.00:00:00", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Options_SectionOverloadPathThatDoesNotExist_FailsNamingThePathAndWhatIsThere()
    {
        // A typo in the path ("Kubernets"): it bound nothing and ran with the defaults, without a word.
        var configuration = Json("""{ "MyApp": { "Kubernetes": { "ResyncInterval": "00:02:00" }, "Port": 5000 } }""");

        var ex = Assert.Throws<OptionsValidationException>(() => BuildWithSection(configuration, "MyApp:Kubernets"));

        Assert.Contains("The configuration section 'MyApp:Kubernets' does not exist", ex.Message, StringComparison.Ordinal);
        Assert.Contains("'MyApp' has: Kubernetes, Port.", ex.Message, StringComparison.Ordinal);
        Assert.Contains("AddKubernetesResolver() without a section", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Options_SectionOverloadEmptyObjectInTheApplicationsConfiguration_GivesTheDefaults()
    {
        var configuration = Json("""{ "MyApp": { "Kubernetes": {} } }""");

        var options = BuildWithSection(configuration, "MyApp:Kubernetes");

        Assert.Equal(KubernetesResolverDefaults.ResyncInterval, options.ResyncInterval);
    }

    [Fact]
    public void Options_BadValueInCodeOverGoodConfiguration_FailsNamingThePropertyNotTheKey()
    {
        // appsettings.json holds a good value; the configure action overrides it with a bad one.
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionRefresh:Kubernetes:ResyncInterval"] = "00:02:00" }).Build());
        services.AddKubernetesResolver(o => o.ResyncInterval = TimeSpan.Zero);
        using var provider = services.BuildServiceProvider();

        var ex = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IOptions<KubernetesResolverOptions>>().Value);

        Assert.Contains("KubernetesResolverOptions.ResyncInterval is 00:00:00; allowed: 00:00:01 to 1.00:00:00.", ex.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("ConnectionRefresh:Kubernetes:ResyncInterval", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Options_ConfigurationSectionOverloadOutOfRange_FailsNamingThatSectionsKey()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["Mine:MaxBackoff"] = "00:00:00.05" }).Build();
        using var provider = new ServiceCollection().AddKubernetesResolver(configuration.GetSection("Mine")).BuildServiceProvider();

        var ex = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IOptions<KubernetesResolverOptions>>().Value);

        Assert.Contains("Mine:MaxBackoff is 00:00:00.0500000; allowed: 00:00:00.1000000 to 01:00:00.", ex.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("ConnectionRefresh:Kubernetes", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Options_MaxBackoffBelowInitial_Fails()
    {
        var ex = Assert.Throws<OptionsValidationException>(() => Build(new()
        {
            ["ConnectionRefresh:Kubernetes:InitialBackoff"] = "00:00:10",
            ["ConnectionRefresh:Kubernetes:MaxBackoff"] = "00:00:05",
        }));

        Assert.Contains("ConnectionRefresh:Kubernetes:MaxBackoff is 00:00:05; allowed: at least ConnectionRefresh:Kubernetes:InitialBackoff, which is 00:00:10.",
            ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Options_ApiServerAndKubeconfigPathBothSet_FailsNamingBoth()
    {
        var ex = Assert.Throws<OptionsValidationException>(() => Build(new()
        {
            ["ConnectionRefresh:Kubernetes:ApiServer"] = "http://127.0.0.1:8001",
            ["ConnectionRefresh:Kubernetes:KubeconfigPath"] = "kubeconfig",
        }));

        Assert.Contains("ConnectionRefresh:Kubernetes:ApiServer is 'http://127.0.0.1:8001/' and ConnectionRefresh:Kubernetes:KubeconfigPath is 'kubeconfig'; " +
            "allowed: at most one of them set.", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Options_UnknownKey_Rejected()
    {
        var ex = Assert.Throws<OptionsValidationException>(() => Build(new() { ["ConnectionRefresh:Kubernetes:ResyncIntervall"] = "00:01:00" }));

        Assert.Contains("ResyncIntervall", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Options_UnknownKeyInOwnSection_NamesTheFullKeyAndTheKeysThereAre()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["MyApp:K8s:Kubeconfig"] = "/home/me/.kube/config" }).Build();
        using var provider = new ServiceCollection().AddKubernetesResolver(configuration.GetSection("MyApp:K8s")).BuildServiceProvider();

        var ex = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IOptions<KubernetesResolverOptions>>().Value);

        // Not the binder's "'ErrorOnUnknownConfiguration' was set on the provided BinderOptions ...": the key as written in the
        // configuration, and what it may be instead.
        Assert.Equal(
            "Unknown configuration key(s) 'MyApp:K8s:Kubeconfig'; the keys of MyApp:K8s are ApiServer, KubeconfigPath, ServiceAccountPath, " +
            "IncludeTerminatingEndpoints, ResyncInterval, InitialBackoff, MaxBackoff.",
            Assert.Single(ex.Failures));
    }

    [Theory]
    [InlineData(null)]
    [InlineData("MyApp:K8s")]
    public void Options_ValueWhereTheSectionBelongs_RejectedNamingTheSectionTheValueAndTheKeys(string? path)
    {
        var key = path ?? "ConnectionRefresh:Kubernetes";
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { [key] = "true" }).Build();
        var services = new ServiceCollection().AddSingleton<IConfiguration>(configuration);
        if (path is null)
        {
            services.AddKubernetesResolver();
        }
        else
        {
            services.AddKubernetesResolver(configuration.GetSection(path));
        }

        using var provider = services.BuildServiceProvider();

        var ex = Assert.Throws<OptionsValidationException>(() => provider.GetRequiredService<IOptions<KubernetesResolverOptions>>().Value);

        Assert.Equal(
            $"The configuration section '{key}' must be an object of settings, e.g. {{ \"IncludeTerminatingEndpoints\": true }}; found the value 'true'. " +
            "Its keys are ApiServer, KubeconfigPath, ServiceAccountPath, IncludeTerminatingEndpoints, ResyncInterval, InitialBackoff, MaxBackoff; " +
            "to run with the defaults, write it as {} or remove it.",
            Assert.Single(ex.Failures));
    }

    [Fact]
    public void Options_EmptyValueWhereTheSectionBelongs_TheDefaults()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionRefresh:Kubernetes"] = "" }).Build();
        using var provider = new ServiceCollection().AddSingleton<IConfiguration>(configuration).AddKubernetesResolver().BuildServiceProvider();

        Assert.Equal(TimeSpan.FromMinutes(5), provider.GetRequiredService<IOptions<KubernetesResolverOptions>>().Value.ResyncInterval);
    }

    [Fact]
    public async Task Options_InvalidValue_FailsAtHostStart()
    {
        var builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder();
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionRefresh:Kubernetes:ResyncInterval"] = "00:00:00" });
        builder.Services.AddKubernetesResolver();
        using var host = builder.Build();

        var ex = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync());

        Assert.Contains("ResyncInterval", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Options_ConfigurationSectionOverload_BindsThatSection()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { ["Mine:MaxBackoff"] = "00:01:00" }).Build();
        var services = new ServiceCollection().AddKubernetesResolver(configuration.GetSection("Mine"));
        using var provider = services.BuildServiceProvider();

        Assert.Equal(TimeSpan.FromMinutes(1), provider.GetRequiredService<IOptions<KubernetesResolverOptions>>().Value.MaxBackoff);
    }

    [Fact]
    public void Factory_NamespaceFromServiceAccountFile_UsedForTargetsWithoutNamespace()
    {
        using var account = new Fakes.ServiceAccountDirectory("t", ns: "team-a");
        var options = new KubernetesResolverOptions { ServiceAccountPath = account.Path };

        Assert.Equal("team-a", KubernetesClientConfigurationFactory.DefaultNamespace(options));
        Assert.Equal("default", KubernetesClientConfigurationFactory.DefaultNamespace(new KubernetesResolverOptions { ServiceAccountPath = "/nonexistent" }));
    }

    private static KubernetesResolverOptions Build(Dictionary<string, string?> values)
    {
        var services = new ServiceCollection();
        services.AddSingleton<IConfiguration>(new ConfigurationBuilder().AddInMemoryCollection(values).Build());
        services.AddKubernetesResolver();
        using var provider = services.BuildServiceProvider();
        return provider.GetRequiredService<IOptions<KubernetesResolverOptions>>().Value;
    }

    private static IConfigurationRoot Json(string json) =>
        new ConfigurationBuilder().AddJsonStream(new MemoryStream(System.Text.Encoding.UTF8.GetBytes(json))).Build();

    // The section overload with the configuration registered as the application's, as a host does.
    private static KubernetesResolverOptions BuildWithSection(IConfigurationRoot configuration, string path)
    {
        var services = new ServiceCollection().AddSingleton<IConfiguration>(configuration);
        using var provider = services.AddKubernetesResolver(configuration.GetSection(path)).BuildServiceProvider();
        return provider.GetRequiredService<IOptions<KubernetesResolverOptions>>().Value;
    }
}
