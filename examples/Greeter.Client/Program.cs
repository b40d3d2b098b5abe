using ConnectionRefresh.Protos;
using Greeter.Client;

var builder = Host.CreateApplicationBuilder(args);

// The one line: AddConnectionRefresh() reads the "ConnectionRefresh" section of appsettings.json.
builder.Services
    .AddGrpcClient<ConnectionRefresh.Protos.Greeter.GreeterClient>(o => o.Address = new Uri(builder.Configuration["Greeter:Address"] ?? "http://localhost:5000"))
    .AddConnectionRefresh();

builder.Services.AddHostedService<GreeterWorker>();
await builder.Build().RunAsync();
