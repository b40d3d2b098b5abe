using Grpc.Core;
using Greeter.Client;
using GreeterClient = ConnectionRefresh.Protos.Greeter.GreeterClient;

var builder = Host.CreateApplicationBuilder(args);
var address = new Uri(builder.Configuration["Greeter:Address"] ?? "http://localhost:5000");

if (address.Scheme == "kubernetes")
{
    // Per-call balancing: watch the Service's EndpointSlices, round_robin (the resolver's default) over every ready pod
    // (options from "ConnectionRefresh:Kubernetes"; needs list + watch on endpointslices, see examples/k8s).
    builder.Services.AddKubernetesResolver();
    builder.Services
        .AddGrpcClient<GreeterClient>(o => o.Address = address)
        .ConfigureChannel(o => o.Credentials = ChannelCredentials.Insecure)
        .ConfigurePrimaryHttpMessageHandler((handler, _) =>
        {
            // A dead node's pod keeps its subchannel Ready until a keepalive ping fails (src/ConnectionRefresh.Kubernetes/README.md, "Dead pods: set keepalive").
            var sockets = (SocketsHttpHandler)handler;
            sockets.KeepAlivePingDelay = TimeSpan.FromSeconds(20); // the Greeter server is Kestrel: no ping limit
            sockets.KeepAlivePingTimeout = TimeSpan.FromSeconds(10);
            sockets.KeepAlivePingPolicy = HttpKeepAlivePingPolicy.WithActiveRequests;
        });
}
else
{
    // The one line: AddConnectionRefresh() reads the "ConnectionRefresh" section of appsettings.json.
    builder.Services
        .AddGrpcClient<GreeterClient>(o => o.Address = address)
        .AddConnectionRefresh();
}

builder.Services.AddHostedService<GreeterWorker>();
await builder.Build().RunAsync();
