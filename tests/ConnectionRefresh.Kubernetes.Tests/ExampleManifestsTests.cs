using ConnectionRefresh.Kubernetes.Internal;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.Serialization;

namespace ConnectionRefresh.Kubernetes.Tests;

/// <summary>Parses examples/k8s and checks kinds, selectors, ports and RBAC, so the manifests stay deployable.</summary>
public sealed class ExampleManifestsTests
{
    private static readonly string Directory = Path.Combine(AppContext.BaseDirectory, "k8s");

    [Fact]
    public void Server_DeploymentServicesAndHpa_SelectorsAndPortsMatch()
    {
        var docs = Load("server.yaml");
        Assert.Equal(["Deployment", "Service", "Service", "HorizontalPodAutoscaler"], docs.Select(d => S(d, "kind")));

        var deployment = docs.Single(d => S(d, "kind") == "Deployment");
        var matchLabels = Map(deployment, "spec", "selector", "matchLabels");
        var podLabels = Map(deployment, "spec", "template", "metadata", "labels");
        Assert.All(matchLabels, l => Assert.Equal(l.Value, podLabels[l.Key]));
        var containerPorts = List(deployment, "spec", "template", "spec", "containers").Cast<Dictionary<object, object>>()
            .SelectMany(c => List(c, "ports").Cast<Dictionary<object, object>>()).ToList();
        var grpcPort = Assert.Single(containerPorts, p => S(p, "name") == "grpc");

        var services = docs.Where(d => S(d, "kind") == "Service").ToList();
        foreach (var service in services)
        {
            Assert.All(Map(service, "spec", "selector"), l => Assert.Equal(l.Value, podLabels[l.Key]));
            var port = Assert.Single(List(service, "spec", "ports").Cast<Dictionary<object, object>>());
            Assert.Equal("grpc", S(port, "name"));
            Assert.Contains(S(port, "targetPort"), new[] { "grpc", S(grpcPort, "containerPort") });
        }

        Assert.Contains(services, s => Map(s, "spec").GetValueOrDefault("clusterIP") as string == "None");
        Assert.Contains(services, s => Map(s, "spec").GetValueOrDefault("type") as string == "ClusterIP");

        var hpa = docs.Single(d => S(d, "kind") == "HorizontalPodAutoscaler");
        Assert.Equal(S(Map(deployment, "metadata"), "name"), S(Map(hpa, "spec", "scaleTargetRef"), "name"));

        // Strategy "server max age" is shown.
        Assert.Contains(Env(deployment), e => e.Key == "ConnectionRefresh__Server__MaxConnectionAge");
    }

    [Fact]
    public void ClientResolver_Rbac_GrantsExactlyListAndWatchOnEndpointSlices()
    {
        var docs = Load("client-resolver.yaml");
        Assert.Equal(["ServiceAccount", "Role", "RoleBinding", "Deployment"], docs.Select(d => S(d, "kind")));

        var role = docs.Single(d => S(d, "kind") == "Role");
        var rule = Assert.Single(List(role, "rules").Cast<Dictionary<object, object>>());
        Assert.Equal(["discovery.k8s.io"], List(rule, "apiGroups"));
        Assert.Equal(["endpointslices"], List(rule, "resources"));
        Assert.Equal(["list", "watch"], List(rule, "verbs").Cast<string>().Order());

        var account = S(Map(docs.Single(d => S(d, "kind") == "ServiceAccount"), "metadata"), "name");
        var binding = docs.Single(d => S(d, "kind") == "RoleBinding");
        Assert.Equal(S(Map(role, "metadata"), "name"), S(Map(binding, "roleRef"), "name"));
        Assert.Equal("Role", S(Map(binding, "roleRef"), "kind"));
        var subject = Assert.Single(List(binding, "subjects").Cast<Dictionary<object, object>>());
        Assert.Equal(("ServiceAccount", account), (S(subject, "kind"), S(subject, "name")));

        var deployment = docs.Single(d => S(d, "kind") == "Deployment");
        Assert.Equal(account, S(Map(deployment, "spec", "template", "spec"), "serviceAccountName"));

        // Strategy "resolver": the address parses, and names the Service and the Service's port name.
        var target = KubernetesTarget.Parse(new Uri(Env(deployment)["Greeter__Address"]));
        var server = Load("server.yaml");
        var service = server.Single(d => S(d, "kind") == "Service" && S(Map(d, "metadata"), "name") == target.Service);
        Assert.Equal(S(Map(service, "metadata"), "namespace"), target.Namespace);
        Assert.Contains(List(service, "spec", "ports").Cast<Dictionary<object, object>>(), p => S(p, "name") == target.PortName);
    }

    [Fact]
    public void ClientRefresh_Deployment_DialsTheClusterIpServiceWithConnectionRefresh()
    {
        var docs = Load("client-refresh.yaml");
        var deployment = Assert.Single(docs);
        Assert.Equal("Deployment", S(deployment, "kind"));
        var env = Env(deployment);

        Assert.StartsWith("http://greeter.default.svc:", env["Greeter__Address"], StringComparison.Ordinal);
        Assert.Contains("ConnectionRefresh__MaxConnectionAge", env.Keys);
    }

    private static List<Dictionary<object, object>> Load(string file)
    {
        using var reader = new StringReader(File.ReadAllText(Path.Combine(Directory, file)));
        var parser = new Parser(reader);
        var deserializer = new DeserializerBuilder().Build();
        var docs = new List<Dictionary<object, object>>();
        parser.Consume<StreamStart>();
        while (parser.Accept<DocumentStart>(out _))
        {
            docs.Add(deserializer.Deserialize<Dictionary<object, object>>(parser));
        }

        return docs;
    }

    private static Dictionary<string, string> Env(Dictionary<object, object> deployment) =>
        List(deployment, "spec", "template", "spec", "containers").Cast<Dictionary<object, object>>()
            .SelectMany(c => c.TryGetValue("env", out var env) ? ((List<object>)env).Cast<Dictionary<object, object>>() : [])
            .ToDictionary(e => S(e, "name"), e => S(e, "value"));

    private static Dictionary<object, object> Map(Dictionary<object, object> node, params string[] path) =>
        path.Aggregate(node, (current, key) => (Dictionary<object, object>)current[key]);

    private static List<object> List(Dictionary<object, object> node, params string[] path) =>
        (List<object>)Map(node, path[..^1])[path[^1]];

    private static string S(Dictionary<object, object> node, string key) => (string)node[key];
}
