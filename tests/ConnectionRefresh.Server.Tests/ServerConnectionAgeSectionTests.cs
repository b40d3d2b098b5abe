using System.Net;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace ConnectionRefresh.Server.Tests;

/// <summary>
/// The shape of the configuration section: one given by path must exist, and every section must be an object of
/// settings. Each case runs through one of the three registrations ("services": <c>AddServerConnectionAge</c>,
/// "kestrel": <c>KestrelServerOptions.UseServerConnectionAge</c>, "listen": <c>ListenOptions.UseServerConnectionAge</c>),
/// with a section (<c>bySection</c>) or without one (the optional <c>ConnectionRefresh:Server</c>).
/// </summary>
public sealed class ServerConnectionAgeSectionTests
{
    private const string ByPath = "Grpc:ConnectionAge";

    /// <summary>The application's configuration from JSON, as appsettings.json gives it (the real JSON provider).</summary>
    private static IConfigurationRoot Json(string json) =>
        new ConfigurationBuilder().AddJsonStream(new MemoryStream(Encoding.UTF8.GetBytes(json))).Build();

    /// <summary>
    /// Registers or applies the connection age with <paramref name="section"/> (<see langword="null"/>: the overload
    /// without one), with <paramref name="application"/> as the application's IConfiguration, and runs the point of
    /// start-up where it is read: the host's ValidateOnStart for "services"; for the Kestrel overloads the call itself,
    /// which a host makes when it configures Kestrel as it starts (see <see cref="WebApplication_SectionThatDoesNotExist_FailsAtStartUp"/>).
    /// </summary>
    private static void Start(string overload, IConfiguration? application, IConfigurationSection? section)
    {
        var services = new ServiceCollection();
        if (application is not null)
        {
            services.AddSingleton(application);
        }

        if (overload == "services")
        {
            _ = section is null ? services.AddServerConnectionAge() : services.AddServerConnectionAge(section);
        }

        using var provider = services.BuildServiceProvider();
        var kestrel = new KestrelServerOptions { ApplicationServices = provider };
        switch (overload)
        {
            case "services":
                provider.GetRequiredService<IStartupValidator>().Validate();
                break;
            case "kestrel":
                _ = section is null ? kestrel.UseServerConnectionAge() : kestrel.UseServerConnectionAge(section);
                break;
            default:
                kestrel.Listen(IPAddress.Loopback, 0, l => _ = section is null ? l.UseServerConnectionAge() : l.UseServerConnectionAge(section));
                break;
        }
    }

    [Theory]
    [InlineData("services")]
    [InlineData("kestrel")]
    [InlineData("listen")]
    public void Start_SectionGivenByPathThatDoesNotExist_FailsNamingThePathAndWhatIsThere(string overload)
    {
        var configuration = Json("""{ "Grpc": { "ConnectionAge": { "MaxConnectionAge": "00:02:00" }, "Port": 5000 } }""");

        // Before: bound nothing and ran with the defaults, without a word.
        var failure = Assert.Throws<InvalidOperationException>(() => Start(overload, configuration, configuration.GetSection("Grpc:ConectionAge")));

        Assert.Contains("'Grpc:ConectionAge' does not exist", failure.Message, StringComparison.Ordinal);
        Assert.Contains("'Grpc' has: ConnectionAge, Port.", failure.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("services", """{ "Logging": {} }""")]
    [InlineData("kestrel", """{ "Logging": {} }""")]
    [InlineData("listen", """{ "Logging": {} }""")]
    [InlineData("services", "{}")]
    [InlineData("kestrel", "{}")]
    [InlineData("listen", "{}")]
    public void Start_SectionGivenByPathThatDoesNotExist_SaysWhereThePathStops(string overload, string json)
    {
        var failure = Assert.Throws<InvalidOperationException>(() => Start(overload, Json(json), Json(json).GetSection(ByPath)));

        Assert.Contains($"'{ByPath}' does not exist", failure.Message, StringComparison.Ordinal);
        Assert.Contains(json == "{}" ? "The application's configuration is empty." : "The top level has: Logging.", failure.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("services")]
    [InlineData("kestrel")]
    [InlineData("listen")]
    public void Start_EmptySectionOutsideTheApplicationsConfiguration_Fails(string overload)
    {
        // Only the application's IConfiguration can show that an empty key is there; without one, {} looks like a typo.
        var section = Json("""{ "Age": {} }""").GetSection("Age");

        var failure = Assert.Throws<InvalidOperationException>(() => Start(overload, application: null, section));

        Assert.Contains("'Age' does not exist", failure.Message, StringComparison.Ordinal);
        Assert.Contains("no IConfiguration", failure.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("services", true, """{ "Grpc": { "ConnectionAge": {} } }""")]
    [InlineData("kestrel", true, """{ "Grpc": { "ConnectionAge": {} } }""")]
    [InlineData("listen", true, """{ "Grpc": { "ConnectionAge": {} } }""")]
    [InlineData("listen", true, """{ "Grpc": { "ConnectionAge": null } }""")]
    [InlineData("services", false, """{ "Logging": {} }""")]
    [InlineData("kestrel", false, """{ "Logging": {} }""")]
    [InlineData("listen", false, """{ "Logging": {} }""")]
    [InlineData("services", false, """{ "ConnectionRefresh": { "Server": {} } }""")]
    [InlineData("kestrel", false, """{ "ConnectionRefresh": { "Server": null } }""")]
    public void Start_SectionWrittenEmptyOrOptionalSectionAbsent_UsesDefaults(string overload, bool bySection, string json)
    {
        var configuration = Json(json);

        // The JSON provider keeps "X": {} as the key with a null value: Exists() is false, yet the parent lists it.
        Start(overload, configuration, bySection ? configuration.GetSection(ByPath) : null);
    }

    /// <summary>Sections written as something other than an object, with what the message must say, for every overload.</summary>
    public static TheoryData<string, string, string, bool> SectionsThatAreNotObjects()
    {
        var shapes = new (string Json, string Found)[]
        {
            ("\"5m\"", "found the value '5m'"),
            ("3", "found the value '3'"),
            // The JSON provider stores "" and [] alike: the key with the value "".
            ("\"\"", "found an empty value"),
            ("[]", "found an empty value"),
            ("""[ { "MaxConnectionAge": "00:05:00" } ]""", "found an array of 1 element"),
            ("[ 1, 2 ]", "found an array of 2 elements"),
        };
        var data = new TheoryData<string, string, string, bool>();
        foreach (var (json, found) in shapes)
        {
            foreach (var overload in new[] { "services", "kestrel", "listen" })
            {
                data.Add(json, found, overload, false);
                data.Add(json, found, overload, true);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(SectionsThatAreNotObjects))]
    public void Start_SectionThatIsNotAnObject_FailsNamingPathAndValue(string json, string found, string overload, bool bySection)
    {
        var configuration = Json(bySection
            ? $$"""{ "Grpc": { "ConnectionAge": {{json}} } }"""
            : $$"""{ "ConnectionRefresh": { "Server": {{json}} } }""");
        var path = bySection ? ByPath : "ConnectionRefresh:Server";

        // Before: values and [] bound nothing and ran with the defaults; [ {...} ] failed as an unknown key '...:0'.
        var failure = Assert.Throws<InvalidOperationException>(() => Start(overload, configuration, bySection ? configuration.GetSection(path) : null));

        Assert.Contains($"'{path}' must be an object of settings", failure.Message, StringComparison.Ordinal);
        Assert.Contains(found, failure.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("listen", "Build")]
    [InlineData("services", "StartAsync")]
    public async Task WebApplication_SectionThatDoesNotExist_FailsAtStartUp(string overload, string failingStep)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Configuration.AddJsonStream(new MemoryStream(Encoding.UTF8.GetBytes("""{ "Grpc": { "ConnectionAge": {} } }""")));
        var section = builder.Configuration.GetSection("Grpc:ConectionAge");
        if (overload == "services")
        {
            builder.Services.AddServerConnectionAge(section);
        }
        else
        {
            builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(IPAddress.Loopback, 0, l => l.UseServerConnectionAge(section)));
        }

        // WebApplicationBuilder.Build() creates Kestrel, and so runs its configuration; ValidateOnStart runs in StartAsync.
        var step = "Build";
        var failure = await Assert.ThrowsAsync<InvalidOperationException>(async () =>
        {
            await using var app = builder.Build();
            step = "StartAsync";
            await app.StartAsync();
            await app.StopAsync();
        });

        Assert.Equal(failingStep, step);
        Assert.Contains("'Grpc:ConectionAge' does not exist", failure.Message, StringComparison.Ordinal);
        Assert.Contains("'Grpc' has: ConnectionAge.", failure.Message, StringComparison.Ordinal);
    }
}
