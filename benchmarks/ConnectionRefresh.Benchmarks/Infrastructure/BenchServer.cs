using System.Net;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Benchmarks.Infrastructure;

/// <summary>
/// A real Kestrel gRPC server on loopback with two endpoints: HTTP/2 cleartext (h2c) and HTTP/2 over TLS with a
/// self-signed certificate made at start-up. Listens on 127.0.0.1 only. Plain Kestrel, or with ConnectionRefresh.Server
/// (<see cref="ServerSetup"/>) for the <c>serverab</c> command.
/// </summary>
internal sealed class BenchServer : IAsyncDisposable
{
    private readonly WebApplication _app;

    private BenchServer(WebApplication app, Uri h2c, Uri tls, string thumbprint)
    {
        _app = app;
        H2c = h2c;
        Tls = tls;
        Thumbprint = thumbprint;
    }

    public Uri H2c { get; }

    public Uri Tls { get; }

    /// <summary>SHA-1 thumbprint of the server certificate; clients accept exactly this certificate.</summary>
    public string Thumbprint { get; }

    public static async Task<BenchServer> StartAsync(ServerSetup? setup = null)
    {
        setup ??= ServerSetup.Plain;
        var certificate = CreateCertificate();
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Services.AddGrpc();
        if (setup.Package)
        {
            // As the README's quick start and examples/Greeter.Server: options from "ConnectionRefresh:Server" (absent
            // here, so the package's defaults), or the age set in code for the rotating setup.
            if (setup.MaxConnectionAge is { } age)
            {
                builder.Services.AddServerConnectionAge(o => o.MaxConnectionAge = age);
            }
            else
            {
                builder.Services.AddServerConnectionAge();
            }
        }

        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            // Endpoint defaults reach only the endpoints added after them, so this comes first. On the TLS endpoint
            // the package then runs outside Kestrel's TLS (it sees TLS records); AfterHttps puts it inside instead.
            if (setup.Package && !setup.AfterHttps)
            {
                kestrel.UseServerConnectionAge();
            }

            kestrel.Listen(IPAddress.Loopback, 0, listen =>
            {
                listen.Protocols = HttpProtocols.Http2;
                if (setup.AfterHttps)
                {
                    listen.UseServerConnectionAge();
                }
            });
            kestrel.Listen(IPAddress.Loopback, 0, listen =>
            {
                listen.Protocols = HttpProtocols.Http2;
                listen.UseHttps(certificate);
                if (setup.AfterHttps)
                {
                    listen.UseServerConnectionAge();
                }
            });
        });
        var app = builder.Build();
        app.MapGrpcService<BenchGreeter>();
        await app.StartAsync().ConfigureAwait(false);

        var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses;
        var h2c = addresses.Select(a => new Uri(a)).Single(a => a.Scheme == Uri.UriSchemeHttp);
        var tls = addresses.Select(a => new Uri(a)).Single(a => a.Scheme == Uri.UriSchemeHttps);
        return new BenchServer(app, h2c, tls, certificate.Thumbprint);
    }

    public ValueTask DisposeAsync() => _app.DisposeAsync();

    /// <summary>Accepts the certificate with <paramref name="thumbprint"/> and nothing else.</summary>
    public static RemoteCertificateValidationCallback Accept(string thumbprint) =>
        (_, certificate, _, _) => certificate is not null
            && string.Equals(certificate.GetCertHashString(), thumbprint, StringComparison.OrdinalIgnoreCase);

    // RSA 2048, as cert-manager issues by default; valid for 127.0.0.1 and localhost.
    public static X509Certificate2 CreateCertificate()
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var names = new SubjectAlternativeNameBuilder();
        names.AddIpAddress(IPAddress.Loopback);
        names.AddDnsName("localhost");
        request.CertificateExtensions.Add(names.Build());
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyEncipherment, critical: true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], critical: false));
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        // A PKCS#12 round trip gives a certificate whose private key SslStream can use on every platform.
        return X509CertificateLoader.LoadPkcs12(certificate.Export(X509ContentType.Pfx), password: null);
    }
}
