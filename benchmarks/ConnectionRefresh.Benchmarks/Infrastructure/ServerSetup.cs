using System.Globalization;

namespace ConnectionRefresh.Benchmarks.Infrastructure;

/// <summary>
/// How the benchmark server runs: plain Kestrel, or with ConnectionRefresh.Server added as a user would add it
/// (<c>AddServerConnectionAge()</c> and <c>UseServerConnectionAge()</c>). Passed to the child process as arguments.
/// </summary>
/// <param name="Name">The name on the command line: <c>plain</c>, <c>package</c>, <c>package-after-https</c>, <c>rotating</c>.</param>
/// <param name="Package">Whether ConnectionRefresh.Server is on both endpoints.</param>
/// <param name="MaxConnectionAge">Set in code; <see langword="null"/>: the package's defaults (5 min ±10 %).</param>
/// <param name="AfterHttps">
/// <c>listen.UseServerConnectionAge()</c> on each endpoint after <c>UseHttps</c>, so that on TLS the package sees
/// HTTP/2 frames in clear; otherwise <c>kestrel.UseServerConnectionAge()</c> (endpoint defaults, the README's quick
/// start), which puts it outside TLS.
/// </param>
internal sealed record ServerSetup(string Name, bool Package, TimeSpan? MaxConnectionAge = null, bool AfterHttps = false)
{
    public static readonly ServerSetup Plain = new("plain", Package: false);

    public static readonly string[] Names = ["plain", "package", "package-after-https", "rotating"];

    public static ServerSetup Parse(string name, TimeSpan rotationAge) => name switch
    {
        "plain" => Plain,
        "package" => new(name, Package: true),
        "package-after-https" => new(name, Package: true, AfterHttps: true),
        "rotating" => new(name, Package: true, MaxConnectionAge: rotationAge),
        _ => throw new ArgumentException($"Unknown server setup '{name}'; use {string.Join(", ", Names)}."),
    };

    public string Label => this switch
    {
        { Package: false } => "plain Kestrel",
        { MaxConnectionAge: { } age } => string.Create(CultureInfo.InvariantCulture, $"ConnectionRefresh.Server, MaxConnectionAge {age.TotalSeconds:0.###} s"),
        { AfterHttps: true } => "ConnectionRefresh.Server defaults (MaxConnectionAge 5 min ±10 %), listen.UseServerConnectionAge() after UseHttps",
        _ => "ConnectionRefresh.Server defaults (MaxConnectionAge 5 min ±10 %), kestrel.UseServerConnectionAge()",
    };

    /// <summary>The child's command-line arguments after <c>server</c>.</summary>
    public IEnumerable<string> ToArguments() => MaxConnectionAge is { } age
        ? ["--setup", Name, "--max-age", age.TotalSeconds.ToString(CultureInfo.InvariantCulture)]
        : ["--setup", Name];

    public static ServerSetup FromArguments(IReadOnlyList<string> args)
    {
        var name = "plain";
        var age = TimeSpan.FromSeconds(1);
        for (var i = 0; i + 1 < args.Count; i += 2)
        {
            switch (args[i])
            {
                case "--setup": name = args[i + 1]; break;
                case "--max-age": age = TimeSpan.FromSeconds(double.Parse(args[i + 1], CultureInfo.InvariantCulture)); break;
                default: throw new ArgumentException($"server: unknown option '{args[i]}'.");
            }
        }

        return Parse(name, age);
    }
}
