using Greeter.Server;

// A Kestrel gRPC Greeter (HTTP/2 without TLS, "h2c") whose connections are closed gracefully after
// ConnectionRefresh:Server:MaxConnectionAge (appsettings.json, or environment variables such as
// ConnectionRefresh__Server__MaxConnectionAge=00:05:00), so that every client reconnects and kube-proxy
// spreads the connections over all pods, including new ones.
var builder = WebApplication.CreateBuilder(args);

builder.Services.AddSingleton(InstanceName.FromEnvironment());
builder.Services.AddGrpc();
builder.Services.AddGrpcHealthChecks();

// Options from the "ConnectionRefresh:Server" section, validated at start-up; counts calls per connection.
builder.Services.AddServerConnectionAge();

// Every endpoint (ASPNETCORE_HTTP_PORTS, --urls, Kestrel:Endpoints) closes its connections by age.
builder.WebHost.ConfigureKestrel(kestrel => kestrel.UseServerConnectionAge());

var app = builder.Build();
app.MapGrpcService<GreeterService>();
app.MapGrpcHealthChecksService();
app.MapGet("/", () => "Greeter gRPC server (HTTP/2 only). Use a gRPC client.");
app.Run();
