using System.Security.Authentication;
using System.Text;
using ConnectionRefresh.Kubernetes.Internal;
using ConnectionRefresh.Kubernetes.Tests.Fakes;
using ConnectionRefresh.Protos;
using ConnectionRefresh.Testing;
using Grpc.Core;
using Grpc.Net.Client.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace ConnectionRefresh.Kubernetes.Tests;

/// <summary>
/// How the resolver finds and trusts the API server when <see cref="KubernetesResolverOptions.ApiServer"/> is not set:
/// in a pod (KUBERNETES_SERVICE_HOST/PORT, the service account's token, ca.crt and namespace) and with a kubeconfig.
/// The fake API server serves HTTPS with a certificate from a test CA. The environment is passed through
/// <see cref="EnvironmentReader"/>, never set on the process, so these tests can run in parallel with any other.
/// </summary>
public sealed class KubernetesResolverConfigurationTests
{
    [Fact]
    public async Task InCluster_ServiceHostPortAndServiceAccount_ResolvesOverVerifiedHttpsWithTheBearerToken()
    {
        await using var server = await HttpsKubernetesApi.StartAsync("token-1");
        server.Api.Apply("prod", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080));
        server.Api.Apply("default", Slices.Ready("a", "greeter", ["10.9.9.9"], 8080));
        using var account = new ServiceAccountDirectory("token-1", ns: "prod", caPem: server.CaPem);

        // kubernetes:///greeter:8080 has no namespace: the service account's (prod) is used.
        using var harness = new FactoryResolverHarness(Options(account), InCluster(server.Api));

        await Poll.UntilAsync(() => harness.LastAddresses is not null, "resolved through the in-cluster configuration");
        Assert.Equal(["10.0.0.1:8080"], harness.LastAddresses!);
        Assert.Equal("prod", harness.Resolver.Namespace);
        Assert.Equal(Uri.UriSchemeHttps, server.Api.Url.Scheme);
        Assert.NotEmpty(server.Api.SeenTokens);
        Assert.All(server.Api.SeenTokens, token => Assert.Equal("token-1", token));
    }

    [Fact]
    public async Task AddKubernetesResolver_InClusterWithoutApiServer_CallsReachThePods()
    {
        await using var server = await HttpsKubernetesApi.StartAsync("token-1");
        await using var pods = await GreeterPods.StartAsync(2);
        server.Api.Apply("default", Slices.Ready("greeter-a", "greeter", pods.Ips, pods.Port));
        using var account = new ServiceAccountDirectory("token-1", caPem: server.CaPem);

        // The registration src/ConnectionRefresh.Kubernetes/README.md shows, with only the service account directory changed; the process environment is
        // replaced by the internal EnvironmentReader the factory takes from DI.
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddSingleton(Env(InCluster(server.Api)));
        services.AddKubernetesResolver(o => o.ServiceAccountPath = account.Path);
        services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = new Uri("kubernetes:///greeter:grpc"))
            .ConfigureChannel(o =>
            {
                o.Credentials = ChannelCredentials.Insecure;
                o.ServiceConfig = new ServiceConfig { LoadBalancingConfigs = { new RoundRobinConfig() } };
            });
        await using var provider = services.BuildServiceProvider(validateScopes: true);
        var client = provider.GetRequiredService<Greeter.GreeterClient>();

        var seen = new HashSet<string>();
        await Poll.UntilAsync(async () =>
        {
            seen.Add((await client.SayHelloAsync(new HelloRequest { Name = "in-cluster" }, deadline: DateTime.UtcNow.AddSeconds(10))).Instance);
            return pods.Ips.All(seen.Contains);
        }, "both pods serve calls");
        Assert.All(server.Api.SeenTokens, token => Assert.Equal("token-1", token));
    }

    [Fact]
    public void AddKubernetesResolver_NotInAPodAndNoKubeconfig_CreatingTheClientThrowsAClearError()
    {
        using var dir = new TempDirectory();
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddSingleton(Env(new() { ["HOME"] = dir.Path }));
        services.AddKubernetesResolver(o => o.ServiceAccountPath = dir.Combine("no-service-account"));
        services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = new Uri("kubernetes:///greeter.default:grpc"))
            .ConfigureChannel(o => o.Credentials = ChannelCredentials.Insecure);
        using var provider = services.BuildServiceProvider(validateScopes: true);

        var ex = Assert.ThrowsAny<Exception>(() => provider.GetRequiredService<Greeter.GreeterClient>());

        var error = InnermostOfType<InvalidOperationException>(ex);
        Assert.NotNull(error);
        Assert.Contains("KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(true, "MyApp:Kubernetes:ApiServer or MyApp:Kubernetes:KubeconfigPath (in code, KubernetesResolverOptions.ApiServer or .KubeconfigPath)")]
    [InlineData(false, "KubernetesResolverOptions.ApiServer or .KubeconfigPath.")]
    public void AddKubernetesResolver_NoApiServerWithOwnSectionOrNone_TheErrorSaysWhereToSetApiServerOrKubeconfigPath(bool fromSection, string expected)
    {
        using var dir = new TempDirectory();
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddSingleton(Env(new() { ["HOME"] = dir.Path }));
        if (fromSection)
        {
            var configuration = new ConfigurationBuilder()
                .AddInMemoryCollection(new Dictionary<string, string?> { ["MyApp:Kubernetes:ServiceAccountPath"] = dir.Combine("no-service-account") })
                .Build();
            services.AddKubernetesResolver(configuration.GetSection("MyApp:Kubernetes"));
        }
        else
        {
            // No IConfiguration registered: nothing is bound, the options come from code only.
            services.AddKubernetesResolver(o => o.ServiceAccountPath = dir.Combine("no-service-account"));
        }

        services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = new Uri("kubernetes:///greeter.default:grpc"))
            .ConfigureChannel(o => o.Credentials = ChannelCredentials.Insecure);
        using var provider = services.BuildServiceProvider(validateScopes: true);

        var ex = Assert.ThrowsAny<Exception>(() => provider.GetRequiredService<Greeter.GreeterClient>());

        // Not ConnectionRefresh:Kubernetes:ApiServer, a section this application never binds.
        var message = string.Join(" | ", Chain(ex).Select(e => e.Message));
        Assert.True(message.Contains($"elsewhere set {expected}", StringComparison.Ordinal), message);
        Assert.DoesNotContain("ConnectionRefresh:Kubernetes", message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task InCluster_TokenFileRotated_NewTokenUsedOnceTheOldOneIsRevoked()
    {
        await using var server = await HttpsKubernetesApi.StartAsync("token-1");
        server.Api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080));
        using var account = new ServiceAccountDirectory("token-1", caPem: server.CaPem);
        using var harness = new FactoryResolverHarness(Options(account), InCluster(server.Api));
        await Poll.UntilAsync(() => server.Api.ActiveWatches == 1, "watching with the first token");

        // The kubelet renews the projected token (atomic rename); the API server then accepts only the new one and the open
        // watch ends (as on a server-side timeout), so the next requests must carry the new token.
        account.WriteToken("token-2");
        await TokenRotation.AssertAChangeIsResolvedWithTheNewTokenAsync(server.Api, harness, "token-1", "token-2", ["10.0.0.1", "10.0.0.2"]);
        Assert.All(harness.Results, r => Assert.Equal(StatusCode.OK, r.Status.StatusCode));
    }

    [Fact]
    public async Task InCluster_ServerCertificateFromAnotherCa_RejectedBeforeTheTokenIsSentAndReported()
    {
        // The service account trusts the cluster's CA; the server presents a certificate from another one.
        using var impostorCa = new TestCertificates("impostor-ca");
        await using var server = await HttpsKubernetesApi.StartAsync("token-1", impostorCa);
        server.Api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080));
        using var account = new ServiceAccountDirectory("token-1", caPem: server.CaPem);

        using var harness = new FactoryResolverHarness(Options(account), InCluster(server.Api));

        // Reported to the channel (calls fail fast with Unavailable), counted and logged, naming service and namespace.
        await Poll.UntilAsync(() => harness.Last is not null && harness.Errors.GetMeasurementSnapshot().Count > 0 &&
            harness.Logs.Collector.GetSnapshot().Any(r => r.Level == LogLevel.Warning), "the TLS failure is reported");
        var result = harness.Last!;
        Assert.Equal(StatusCode.Unavailable, result.Status.StatusCode);
        Assert.Contains("service 'greeter' in namespace 'default'", result.Status.Detail, StringComparison.Ordinal);

        // The server was reached and its certificate rejected: the detail says so and what it is checked against, rather
        // than "could not be reached ... see inner exception".
        Assert.True(result.Status.Detail.Contains("TLS certificate was rejected", StringComparison.Ordinal), result.Status.Detail);
        Assert.Contains(account.Path, result.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain("could not be reached", result.Status.Detail, StringComparison.Ordinal);
        Assert.IsType<AuthenticationException>(InnermostOfType<AuthenticationException>(result.Status.DebugException));
        var warning = harness.Logs.Collector.GetSnapshot().First(r => r.Level == LogLevel.Warning);
        Assert.Contains("greeter", warning.Message, StringComparison.Ordinal);
        Assert.NotNull(InnermostOfType<AuthenticationException>(warning.Exception));
        Assert.Equal("HttpRequestException", harness.Errors.GetMeasurementSnapshot()[0].Tags["error.type"]);

        // The handshake failed before any request: the untrusted server never saw the token.
        Assert.Empty(server.Api.SeenTokens);
        Assert.Equal(0, server.Api.ListCount);
    }

    [Fact]
    public async Task InCluster_TokenFileNotMountedYet_RetriedWithBackoffAndUsedOnceItAppears()
    {
        await using var server = await HttpsKubernetesApi.StartAsync("token-1");
        server.Api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080));
        using var account = new ServiceAccountDirectory("unused", caPem: server.CaPem);
        account.DeleteToken();

        using var harness = new FactoryResolverHarness(Options(account), InCluster(server.Api));

        // Reported (calls fail fast) and retried: no request goes out without the token.
        await Poll.UntilAsync(() => harness.Results.Count(r => r.Status.StatusCode == StatusCode.Unavailable) >= 2, "the missing token reported and retried");
        Assert.NotNull(InnermostOfType<FileNotFoundException>(harness.Last!.Status.DebugException));
        Assert.Contains(Path.Combine(account.Path, "token"), harness.Last!.Status.Detail, StringComparison.Ordinal);
        AssertNothingWasSent(harness.Last!.Status.Detail);

        account.WriteToken("token-1");
        await Poll.UntilAsync(() => harness.LastAddresses is not null, "resolved once the token is mounted");
        Assert.Equal(["10.0.0.1:8080"], harness.LastAddresses!);
        Assert.All(server.Api.SeenTokens, token => Assert.Equal("token-1", token));
    }

    [Fact]
    public async Task InCluster_ServiceAccountDirectoryMissing_OneErrorNamingTheSettingAndAutomountThenRetriedUntilItAppears()
    {
        await using var server = await HttpsKubernetesApi.StartAsync("token-1");
        server.Api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080));
        using var dir = new TempDirectory();
        var accountPath = dir.Combine("serviceaccount"); // automountServiceAccountToken: false - nothing mounted there

        using var harness = new FactoryResolverHarness(Fast(new KubernetesResolverOptions { ServiceAccountPath = accountPath }), InCluster(server.Api));

        // Calls fail fast and say what to fix; the resolver keeps checking, but says so once, as an error.
        await Poll.UntilAsync(() => harness.Results.Count(r => r.Status.StatusCode == StatusCode.Unavailable) >= 3, "the missing service account reported and retried");
        var expected = $"KubernetesResolverOptions.ServiceAccountPath = '{accountPath}' does not exist";
        Assert.Contains(expected, harness.Last!.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("automountServiceAccountToken: false", harness.Last!.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain("could not be reached", harness.Last!.Status.Detail, StringComparison.Ordinal);
        var logs = harness.Logs.Collector.GetSnapshot();
        var error = Assert.Single(logs, r => r.Level >= LogLevel.Warning);
        Assert.Equal(LogLevel.Error, error.Level);
        Assert.Contains("greeter", error.Message, StringComparison.Ordinal);
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
        Assert.Contains("automountServiceAccountToken: false", error.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(logs, r => r.Message.Contains("not mounted yet", StringComparison.Ordinal));
        Assert.Empty(server.Api.SeenTokens);

        // A volume mounted there later (all files at once, as the kubelet's atomic writer does) is used.
        var staging = dir.Combine("staging");
        Directory.CreateDirectory(staging);
        File.WriteAllText(Path.Combine(staging, "token"), "token-1");
        File.WriteAllText(Path.Combine(staging, "ca.crt"), server.CaPem);
        Directory.Move(staging, accountPath);
        await Poll.UntilAsync(() => harness.LastAddresses is not null, "resolved once the service account appears");
        Assert.Equal(["10.0.0.1:8080"], harness.LastAddresses!);
        Assert.Single(harness.Logs.Collector.GetSnapshot(), r => r.Level >= LogLevel.Warning);
    }

    [Theory]
    [InlineData(null, "ServiceAccountPath = '/var/run/secrets/kubernetes.io/serviceaccount' (the default) does not exist",
        "or set KubernetesResolverOptions.ServiceAccountPath to where")]
    [InlineData("MyApp:K8s", "ServiceAccountPath = '/var/run/secrets/kubernetes.io/serviceaccount' (the default) does not exist",
        "or set MyApp:K8s:ServiceAccountPath to where")]
    public void ServiceAccountMissing_DefaultPathSetNowhere_CalledTheDefaultAndTheKeyOfTheBoundSectionToSet(string? section, string expectedNamed, string expectedToSet)
    {
        // The usual case (automountServiceAccountToken: false with the default path): "KubernetesResolverOptions.ServiceAccountPath =
        // ..." alone read as if the application set it in code.
        var options = new KubernetesResolverOptions();
        if (section is not null)
        {
            var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?> { [$"{section}:MaxBackoff"] = "00:00:30" }).Build();
            using var provider = new ServiceCollection().AddKubernetesResolver(configuration.GetSection(section)).BuildServiceProvider();
            options = provider.GetRequiredService<Microsoft.Extensions.Options.IOptions<KubernetesResolverOptions>>().Value;
        }

        var message = KubernetesClientConfigurationFactory.ServiceAccountMissing(options).Message;

        Assert.True(message.Contains(expectedNamed, StringComparison.Ordinal), message);
        Assert.Contains(expectedToSet, message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task InCluster_CaCertificateNotMountedYet_RetriedAndTheServerVerifiedOnceItAppears()
    {
        await using var server = await HttpsKubernetesApi.StartAsync("token-1");
        server.Api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080));
        using var account = new ServiceAccountDirectory("token-1"); // no ca.crt yet

        using var harness = new FactoryResolverHarness(Options(account), InCluster(server.Api));

        // Without ca.crt the client must not fall back to the system's roots for good: it waits for the file.
        await Poll.UntilAsync(() => harness.Results.Count(r => r.Status.StatusCode == StatusCode.Unavailable) >= 2, "the missing ca.crt reported and retried");
        Assert.NotNull(InnermostOfType<FileNotFoundException>(harness.Last!.Status.DebugException));
        Assert.Contains("ca.crt", harness.Last!.Status.Detail, StringComparison.Ordinal);
        AssertNothingWasSent(harness.Last!.Status.Detail);

        account.WriteCa(server.CaPem);
        await Poll.UntilAsync(() => harness.LastAddresses is not null, "resolved over verified https once ca.crt is mounted");
        Assert.Equal(["10.0.0.1:8080"], harness.LastAddresses!);
    }

    [Fact]
    public async Task InCluster_CaCertificateNotPem_ReportedNamingTheFileAndRetriedUntilFixed()
    {
        await using var server = await HttpsKubernetesApi.StartAsync("token-1");
        server.Api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.1"], 8080));
        using var account = new ServiceAccountDirectory("token-1", caPem: "not a certificate");

        using var harness = new FactoryResolverHarness(Options(account), InCluster(server.Api));

        await Poll.UntilAsync(() => harness.Results.Count(r => r.Status.StatusCode == StatusCode.Unavailable) >= 2, "the bad ca.crt reported and retried");
        Assert.Contains($"'{Path.Combine(account.Path, "ca.crt")}' holds no PEM certificate", harness.Last!.Status.Detail, StringComparison.Ordinal);
        AssertNothingWasSent(harness.Last!.Status.Detail);
        Assert.Empty(server.Api.SeenTokens);

        account.WriteCa(server.CaPem);
        await Poll.UntilAsync(() => harness.LastAddresses is not null, "resolved once ca.crt is fixed");
    }

    [Fact]
    public void CreateResolver_NoApiServerThenAKubeconfigAppears_NextCreateSucceeds()
    {
        using var dir = new TempDirectory();
        var options = Fast(new KubernetesResolverOptions { ServiceAccountPath = dir.Combine("no-service-account") });
        using var meters = new FallbackMeterFactory();
        using var factory = new KubernetesResolverFactory(Microsoft.Extensions.Options.Options.Create(options), new KubernetesResolverMetrics(meters),
            environment: Env(new() { ["HOME"] = dir.Path }));

        var first = Assert.Throws<InvalidOperationException>(() => factory.CreateResolver(new Uri("kubernetes:///greeter:8080"), NullLoggerFactory.Instance));
        Assert.Contains("KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set", first.Message, StringComparison.Ordinal);

        // The mistake is fixed (a developer ran `kubectl config`): the next channel works, the failure was not remembered.
        Directory.CreateDirectory(dir.Combine(".kube"));
        File.WriteAllText(Path.Combine(dir.Path, ".kube", "config"), Kubeconfig(new Uri("http://127.0.0.1:1"), caPem: null, "t", ns: "dev"));
        using var resolver = factory.CreateResolver(new Uri("kubernetes:///greeter:8080"), NullLoggerFactory.Instance);
        Assert.Equal("dev", resolver.Namespace);
    }

    [Theory]
    [InlineData("missing", "the file does not exist")]
    [InlineData("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n", "the kubeconfig has no current-context")]
    [InlineData("apiVersion: v1\nkind: Config\ncurrent-context: gone\nclusters: []\ncontexts: []\nusers: []\n", "the current-context 'gone' is not among its contexts")]
    [InlineData("current-context: [unclosed", "not a valid kubeconfig")]
    public async Task Options_KubeconfigPathUnusable_FailsAtHostStartNamingTheSettingAndValue(string content, string expected)
    {
        using var dir = new TempDirectory();
        var path = content == "missing" ? dir.Combine("missing") : dir.Write("config", content);
        var builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder();
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionRefresh:Kubernetes:KubeconfigPath"] = path });
        builder.Services.AddKubernetesResolver();
        using var host = builder.Build();

        var ex = await Assert.ThrowsAsync<Microsoft.Extensions.Options.OptionsValidationException>(() => host.StartAsync());

        Assert.True(ex.Message.Contains($"ConnectionRefresh:Kubernetes:KubeconfigPath = '{path}': {expected}", StringComparison.Ordinal), ex.Message);
    }

    [Theory]
    [InlineData(true, "MyApp:Kubernetes:KubeconfigPath")]
    [InlineData(false, "KubernetesResolverOptions.KubeconfigPath")]
    public void AddKubernetesResolver_KubeconfigPathRemovedAfterStartUp_CreatingTheClientNamesWhereTheSettingCameFrom(bool fromSection, string expectedKey)
    {
        using var dir = new TempDirectory();
        var path = dir.Write("config", Kubeconfig(new Uri("http://127.0.0.1:1"), caPem: null, "t", ns: null));
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddSingleton(Env(new() { ["HOME"] = dir.Path }));
        if (fromSection)
        {
            var configuration = new ConfigurationBuilder()
                .AddInMemoryCollection(new Dictionary<string, string?> { ["MyApp:Kubernetes:KubeconfigPath"] = path })
                .Build();
            services.AddKubernetesResolver(configuration.GetSection("MyApp:Kubernetes"));
        }
        else
        {
            services.AddKubernetesResolver(o => o.KubeconfigPath = path);
        }

        services.AddGrpcClient<Greeter.GreeterClient>(o => o.Address = new Uri("kubernetes:///greeter.default:grpc"))
            .ConfigureChannel(o => o.Credentials = ChannelCredentials.Insecure);
        using var provider = services.BuildServiceProvider(validateScopes: true);

        // Valid at start-up (validation passes), gone when the first channel is created.
        _ = provider.GetRequiredService<Microsoft.Extensions.Options.IOptions<KubernetesResolverOptions>>().Value;
        File.Delete(path);
        var ex = Assert.ThrowsAny<Exception>(() => provider.GetRequiredService<Greeter.GreeterClient>());

        // Not ConnectionRefresh:Kubernetes:KubeconfigPath, which sent the user to a configuration key they never used.
        var error = InnermostOfType<InvalidOperationException>(ex);
        Assert.NotNull(error);
        Assert.True(error.Message.Contains($"{expectedKey} = '{path}': the file does not exist.", StringComparison.Ordinal), error.Message);
        Assert.DoesNotContain("ConnectionRefresh:Kubernetes:KubeconfigPath", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Options_KubeconfigPathRelativeAndMissing_FailsAtHostStartShowingWhereItWasLookedFor()
    {
        var relative = Path.Combine("no-such-directory-" + Guid.NewGuid().ToString("N"), "config");
        var builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder();
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionRefresh:Kubernetes:KubeconfigPath"] = relative });
        builder.Services.AddKubernetesResolver();
        using var host = builder.Build();

        var ex = await Assert.ThrowsAsync<Microsoft.Extensions.Options.OptionsValidationException>(() => host.StartAsync());

        // The current directory of a container or service is often not the application's: say which file was looked for.
        Assert.True(ex.Message.Contains(
            $"ConnectionRefresh:Kubernetes:KubeconfigPath = '{relative}': the file does not exist (a relative path is resolved against the current directory: '{Path.GetFullPath(relative)}').",
            StringComparison.Ordinal), ex.Message);
    }

    [Fact]
    public void InClusterApiServer_Ipv6ServiceHost_BracketedHttpsUri()
    {
        var uri = KubernetesClientConfigurationFactory.InClusterApiServer(Env(new()
        {
            ["KUBERNETES_SERVICE_HOST"] = "fd00::1",
            ["KUBERNETES_SERVICE_PORT"] = "443",
        }));

        Assert.Equal(new Uri("https://[fd00::1]:443/"), uri);
    }

    [Theory]
    [InlineData(null, null)]
    [InlineData(null, "443")]
    [InlineData("", "443")]
    public void InClusterApiServer_ServiceHostNotSet_NullNotInAPod(string? host, string? port)
    {
        Assert.Null(KubernetesClientConfigurationFactory.InClusterApiServer(Env(ServiceVariables(host, port))));
    }

    [Theory]
    [InlineData("10.96.0.1", null,
        "KUBERNETES_SERVICE_HOST = '10.96.0.1' is set (in a pod), but KUBERNETES_SERVICE_PORT is not set: it must be the API server's port, a number from 1 to 65535")]
    [InlineData("10.96.0.1", "",
        "KUBERNETES_SERVICE_HOST = '10.96.0.1' is set (in a pod), but KUBERNETES_SERVICE_PORT is not set: it must be the API server's port, a number from 1 to 65535")]
    [InlineData("10.96.0.1", "https",
        "KUBERNETES_SERVICE_HOST = '10.96.0.1' is set (in a pod), but KUBERNETES_SERVICE_PORT = 'https' is not a valid port: it must be a number from 1 to 65535")]
    [InlineData("10.96.0.1", "0",
        "KUBERNETES_SERVICE_HOST = '10.96.0.1' is set (in a pod), but KUBERNETES_SERVICE_PORT = '0' is not a valid port: it must be a number from 1 to 65535")]
    [InlineData("10.96.0.1", "65536",
        "KUBERNETES_SERVICE_HOST = '10.96.0.1' is set (in a pod), but KUBERNETES_SERVICE_PORT = '65536' is not a valid port: it must be a number from 1 to 65535")]
    [InlineData("kubernetes default", "443",
        "KUBERNETES_SERVICE_HOST = 'kubernetes default' is not a valid host: it must be the API server's IP address or DNS name")]
    public void CreateResolver_ServiceHostSetButPortMissingOrInvalid_ThrowsNamingTheVariableItsValueAndWhatIsAllowed(string host, string? port, string expected)
    {
        using var dir = new TempDirectory();
        var options = Fast(new KubernetesResolverOptions { ServiceAccountPath = dir.Combine("no-service-account") });
        var environment = ServiceVariables(host, port);
        environment["HOME"] = dir.Path;
        using var meters = new FallbackMeterFactory();
        using var factory = new KubernetesResolverFactory(Microsoft.Extensions.Options.Options.Create(options), new KubernetesResolverMetrics(meters),
            environment: Env(environment));

        var ex = Assert.Throws<InvalidOperationException>(() => factory.CreateResolver(new Uri("kubernetes:///greeter:8080"), NullLoggerFactory.Instance));

        // Not "KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set (not in a pod)", which sent users to look for a
        // missing variable, or to a kubeconfig, in a pod whose spec set one of them wrong.
        Assert.True(ex.Message.Contains(expected, StringComparison.Ordinal), ex.Message);
        Assert.DoesNotContain("are not set", ex.Message, StringComparison.Ordinal);
    }

    private static Dictionary<string, string> ServiceVariables(string? host, string? port)
    {
        var environment = new Dictionary<string, string>();
        if (host is not null)
        {
            environment["KUBERNETES_SERVICE_HOST"] = host;
        }

        if (port is not null)
        {
            environment["KUBERNETES_SERVICE_PORT"] = port;
        }

        return environment;
    }

    [Fact]
    public async Task Kubeconfig_TokenUserAndContextNamespace_ResolvesOverVerifiedHttps()
    {
        await using var server = await HttpsKubernetesApi.StartAsync("dev-token");
        server.Api.Apply("staging", Slices.Ready("a", "greeter", ["10.0.0.7"], 8080));
        server.Api.Apply("default", Slices.Ready("a", "greeter", ["10.9.9.9"], 8080));
        using var dir = new TempDirectory();

        // No service account (a developer machine): the kubeconfig gives server, CA, token and the namespace.
        var options = KubeconfigOnly(dir, Kubeconfig(server.Api.Url, server.CaPem, "dev-token", "staging"));
        using var harness = new FactoryResolverHarness(Fast(options), new Dictionary<string, string>());

        await Poll.UntilAsync(() => harness.LastAddresses is not null, "resolved through the kubeconfig");
        Assert.Equal(["10.0.0.7:8080"], harness.LastAddresses!);
        Assert.Equal("staging", harness.Resolver.Namespace);
        Assert.All(server.Api.SeenTokens, token => Assert.Equal("dev-token", token));
    }

    [Fact]
    public async Task DefaultKubeconfig_FromKubeconfigVariable_UsedWhenNotInAPod()
    {
        await using var api = await SimulatedKubernetesApi.StartAsync("dev-token");
        api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.8"], 8080));
        using var dir = new TempDirectory();
        var kubeconfig = dir.Write("config", Kubeconfig(api.Url, caPem: null, "dev-token", ns: null));
        var options = new KubernetesResolverOptions { ServiceAccountPath = dir.Combine("no-service-account") };

        using var harness = new FactoryResolverHarness(Fast(options), new Dictionary<string, string>
        {
            ["KUBECONFIG"] = dir.Combine("missing") + Path.PathSeparator + kubeconfig,
            ["HOME"] = dir.Path,
        });

        await Poll.UntilAsync(() => harness.LastAddresses is not null, "resolved through $KUBECONFIG");
        Assert.Equal(["10.0.0.8:8080"], harness.LastAddresses!);
        Assert.Equal("default", harness.Resolver.Namespace);
    }

    [Fact]
    public void Create_NotInAPodAndNoKubeconfig_ThrowsNamingWhatWasTried()
    {
        using var dir = new TempDirectory();
        var options = new KubernetesResolverOptions { ServiceAccountPath = dir.Combine("no-service-account") };

        var ex = Assert.Throws<InvalidOperationException>(() =>
            KubernetesClientConfigurationFactory.Create(options, Env(new() { ["HOME"] = dir.Path })));

        Assert.Contains("KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set", ex.Message, StringComparison.Ordinal);
        Assert.Contains(Path.Combine(dir.Path, ".kube", "config"), ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Kubeconfig_TokenFileUser_SendsTheFilesTokenAndRereadsItWhenItChanges()
    {
        await using var api = await SimulatedKubernetesApi.StartAsync("file-token-1");
        api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.9"], 8080));
        using var dir = new TempDirectory();
        dir.Write("token", "file-token-1\n");

        // tokenFile relative to the kubeconfig's directory, as kubectl reads it.
        var options = KubeconfigOnly(dir, KubeconfigWithUser(api.Url, caPem: null, user: "tokenFile: token", ns: null));
        using var harness = new FactoryResolverHarness(Fast(options), new Dictionary<string, string>());
        await Poll.UntilAsync(() => harness.LastAddresses is not null && api.ActiveWatches == 1, "resolved and watching with the token file's token");
        Assert.Equal(["10.0.0.9:8080"], harness.LastAddresses!);

        dir.Write("token", "file-token-2\n");
        await TokenRotation.AssertAChangeIsResolvedWithTheNewTokenAsync(api, harness, "file-token-1", "file-token-2", ["10.0.0.9", "10.0.0.10"]);
        Assert.DoesNotContain(api.SeenTokens, token => token is "" or "token-file");
    }

    [Fact]
    public async Task Kubeconfig_TokenFileMissing_ReportedAsTheKubeconfigUsersTokenFileNotAsNotMounted()
    {
        await using var api = await SimulatedKubernetesApi.StartAsync("file-token-1");
        api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.9"], 8080));
        using var dir = new TempDirectory();
        var options = KubeconfigOnly(dir, KubeconfigWithUser(api.Url, caPem: null, user: "tokenFile: token", ns: null));

        using var harness = new FactoryResolverHarness(Fast(options), new Dictionary<string, string>());
        await Poll.UntilAsync(() => harness.Results.Count(r => r.Status.StatusCode == StatusCode.Unavailable) >= 2, "the missing tokenFile reported and retried");

        // A developer's kubeconfig is not mounted by a kubelet: the detail names the user, the kubeconfig and the file.
        var detail = harness.Last!.Status.Detail;
        Assert.True(detail.Contains($"The tokenFile '{dir.Combine("token")}' of user 'developer' in kubeconfig '{options.KubeconfigPath}' does not exist.", StringComparison.Ordinal), detail);
        Assert.DoesNotContain("not mounted", detail, StringComparison.Ordinal);

        dir.Write("token", "file-token-1\n");
        await Poll.UntilAsync(() => harness.LastAddresses is not null, "resolved once the tokenFile exists");
    }

    [Fact]
    public async Task Kubeconfig_ExecCredentialPlugin_SendsThePluginsTokenAndRunsItAgainWhenItExpires()
    {
        await using var api = await SimulatedKubernetesApi.StartAsync("exec-token-1");
        api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.11"], 8080));
        using var dir = new TempDirectory();
        var source = dir.Write("source", "exec-token-1");

        // A client-go credential plugin: prints an ExecCredential whose token has already expired, so the client runs it
        // again for every request (the token it prints is read from a file the test changes).
        var plugin = dir.Write("plugin.sh", $$$"""
            printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"%s","expirationTimestamp":"2000-01-01T00:00:00Z"}}' "$(cat '{{{source}}}')"
            """);
        var options = ExecPluginOptions(dir, api.Url, plugin);
        using var harness = new FactoryResolverHarness(Fast(options), new Dictionary<string, string>());
        await Poll.UntilAsync(() => harness.LastAddresses is not null && api.ActiveWatches == 1, "resolved and watching with the plugin's token");
        Assert.Equal(["10.0.0.11:8080"], harness.LastAddresses!);

        File.WriteAllText(source, "exec-token-2");
        await TokenRotation.AssertAChangeIsResolvedWithTheNewTokenAsync(api, harness, "exec-token-1", "exec-token-2", ["10.0.0.11", "10.0.0.12"]);
        Assert.DoesNotContain(api.SeenTokens, token => token.Length == 0);
    }

    // A kubeconfig whose user runs `/bin/sh plugin` as a client-go exec credential plugin; no service account.
    private static KubernetesResolverOptions ExecPluginOptions(TempDirectory dir, Uri apiServer, string plugin)
    {
        var user = $"""
            exec:
                  apiVersion: client.authentication.k8s.io/v1
                  command: /bin/sh
                  args: ["{plugin}"]
                  interactiveMode: Never
            """;
        return KubeconfigOnly(dir, KubeconfigWithUser(apiServer, caPem: null, user, ns: null));
    }

    // A developer machine: the kubeconfig written to dir/config, no service account.
    private static KubernetesResolverOptions KubeconfigOnly(TempDirectory dir, string kubeconfig) =>
        new() { KubeconfigPath = dir.Write("config", kubeconfig), ServiceAccountPath = dir.Combine("no-service-account") };

    [Fact]
    public async Task Kubeconfig_ExecCredentialPluginFailsAtFirst_RetriedWithBackoffUntilItSucceeds()
    {
        await using var api = await SimulatedKubernetesApi.StartAsync("exec-token");
        api.Apply("default", Slices.Ready("a", "greeter", ["10.0.0.13"], 8080));
        using var dir = new TempDirectory();
        var loggedIn = dir.Combine("logged-in");

        // A plugin that fails until the developer has logged in (the cloud CLI's session expired, its network was down).
        var plugin = dir.Write("plugin.sh", $$$"""
            [ -f '{{{loggedIn}}}' ] || { echo 'not logged in' >&2; exit 1; }
            printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"exec-token"}}'
            """);
        var options = ExecPluginOptions(dir, api.Url, plugin);

        // Creating the resolver does not run the plugin; its failure is a request failure, reported and retried.
        using var harness = new FactoryResolverHarness(Fast(options), new Dictionary<string, string>());
        await Poll.UntilAsync(() => harness.Results.Count(r => r.Status.StatusCode == StatusCode.Unavailable) >= 2, "the plugin's failure reported and retried");
        Assert.NotNull(InnermostOfType<k8s.Exceptions.KubeConfigException>(harness.Last!.Status.DebugException));
        AssertNothingWasSent(harness.Last!.Status.Detail);

        dir.Write("logged-in", "");
        await Poll.UntilAsync(() => harness.LastAddresses is not null, "resolved once the plugin succeeds");
        Assert.Equal(["10.0.0.13:8080"], harness.LastAddresses!);
        Assert.All(api.SeenTokens, token => Assert.Equal("exec-token", token));
    }

    private static KubernetesResolverOptions Options(ServiceAccountDirectory account) =>
        Fast(new KubernetesResolverOptions { ServiceAccountPath = account.Path });

    private static KubernetesResolverOptions Fast(KubernetesResolverOptions options)
    {
        options.InitialBackoff = TimeSpan.FromMilliseconds(20);
        options.MaxBackoff = TimeSpan.FromMilliseconds(200);
        return options;
    }

    private static Dictionary<string, string> InCluster(SimulatedKubernetesApi api) => new()
    {
        ["KUBERNETES_SERVICE_HOST"] = "127.0.0.1",
        ["KUBERNETES_SERVICE_PORT"] = api.Url.Port.ToString(System.Globalization.CultureInfo.InvariantCulture),
    };

    private static EnvironmentReader Env(Dictionary<string, string> variables) => new(name => variables.GetValueOrDefault(name));

    // A failure before any request left the process is not a network problem: "could not be reached" sent users to the network.
    private static void AssertNothingWasSent(string detail)
    {
        Assert.True(detail.Contains("(nothing was sent to the API server)", StringComparison.Ordinal), detail);
        Assert.DoesNotContain("could not be reached", detail, StringComparison.Ordinal);
    }

    private static IEnumerable<Exception> Chain(Exception? exception)
    {
        for (var e = exception; e is not null; e = e.InnerException)
        {
            yield return e;
        }
    }

    private static T? InnermostOfType<T>(Exception? exception)
        where T : Exception
    {
        T? found = null;
        for (var e = exception; e is not null; e = e.InnerException)
        {
            found = e as T ?? found;
        }

        return found;
    }

    private static string Kubeconfig(Uri server, string? caPem, string token, string? ns) =>
        KubeconfigWithUser(server, caPem, user: $"token: {token}", ns);

    /// <summary>A kubeconfig with one context; <paramref name="user"/> is the user's YAML (indented by the caller for more lines).</summary>
    private static string KubeconfigWithUser(Uri server, string? caPem, string user, string? ns)
    {
        var ca = caPem is null ? "" : $"\n    certificate-authority-data: {Convert.ToBase64String(Encoding.ASCII.GetBytes(caPem))}";
        var nsLine = ns is null ? "" : $"\n    namespace: {ns}";
        return $"""
            apiVersion: v1
            kind: Config
            clusters:
            - name: fake
              cluster:
                server: {server.GetLeftPart(UriPartial.Authority)}{ca}
            users:
            - name: developer
              user:
                {user}
            contexts:
            - name: fake
              context:
                cluster: fake
                user: developer{nsLine}
            current-context: fake
            """;
    }

    private sealed class TempDirectory : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("k8s-config-").FullName;

        public string Combine(string name) => System.IO.Path.Combine(Path, name);

        public string Write(string name, string content)
        {
            var path = Combine(name);
            File.WriteAllText(path, content);
            return path;
        }

        public void Dispose() => Directory.Delete(Path, recursive: true);
    }
}
