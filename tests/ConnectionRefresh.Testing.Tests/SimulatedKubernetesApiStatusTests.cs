using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;
using k8s;
using k8s.Autorest;
using k8s.Models;

namespace ConnectionRefresh.Testing.Tests;

/// <summary>
/// <see cref="SimulatedKubernetesApi"/>'s error answers are kube-apiserver's: a <c>Status</c> object with the matching HTTP
/// status, and for a watch from a compacted resourceVersion HTTP 200 and an in-stream ERROR event (or HTTP 410). Checked on
/// the wire with a raw HttpClient and through the real KubernetesClient. (They used to be a 500 with an empty body, or an
/// aborted stream: KubernetesClient's V1Status converter cannot write, it throws NotImplementedException.)
/// </summary>
public sealed class SimulatedKubernetesApiStatusTests
{
    private const string Collection = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

    [Theory]
    [InlineData(Collection)]
    [InlineData(Collection + "?watch=true&resourceVersion=1000")]
    [InlineData(Collection + "/a")]
    [InlineData("/api/v1/namespaces/default/pods")]
    public async Task Request_TokenRejected_401WithAnUnauthorizedStatus(string path)
    {
        await using var api = await SimulatedKubernetesApi.StartAsync("good");
        using var http = new HttpClient { BaseAddress = api.Url };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "bad");

        using var response = await http.GetAsync(path);

        Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        AssertStatus(await response.Content.ReadAsStringAsync(), 401, "Unauthorized", "Unauthorized");
        Assert.Equal(0, api.ListCount);
        Assert.Equal(0, api.ActiveWatches);
    }

    [Theory]
    [InlineData("GET", "/api/v1/namespaces/default/pods", 404, "NotFound", "the server could not find the requested resource")]
    [InlineData("GET", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/a/b", 404, "NotFound", "the server could not find the requested resource")]
    [InlineData("DELETE", Collection, 405, "MethodNotAllowed", "the server does not allow this method on the requested resource")]
    [InlineData("DELETE", Collection + "/a", 405, "MethodNotAllowed", "the server does not allow this method on the requested resource")]
    public async Task Request_NotServed_404Or405WithAStatus(string method, string path, int code, string reason, string message)
    {
        await using var api = await SimulatedKubernetesApi.StartAsync();
        using var http = new HttpClient { BaseAddress = api.Url };

        using var response = await http.SendAsync(new HttpRequestMessage(new HttpMethod(method), path));

        Assert.Equal(code, (int)response.StatusCode);
        AssertStatus(await response.Content.ReadAsStringAsync(), code, reason, message);
    }

    [Theory]
    [InlineData(Collection, "list", null)]
    [InlineData(Collection + "?watch=true&resourceVersion=1000", "watch", null)]
    [InlineData(Collection + "/a", "get", "a")]
    [InlineData(Collection + "?watch=true&fieldSelector=metadata.name%3Da", "watch", "a")]
    [InlineData(Collection + "?fieldSelector=metadata.namespace%3Ddefault,metadata.name%3Da", "list", "a")]
    public async Task Request_TokenForbidden_403WithAForbiddenStatusNamingTheVerb(string path, string verb, string? name)
    {
        await using var api = await SimulatedKubernetesApi.StartAsync("good", "refused");
        api.SetForbiddenTokens("refused");
        api.Apply("default", new V1EndpointSlice { Metadata = new V1ObjectMeta { Name = "a" }, AddressType = "IPv4", Endpoints = [] });
        using var http = new HttpClient { BaseAddress = api.Url };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "refused");

        using var response = await http.GetAsync(path);

        Assert.Equal(HttpStatusCode.Forbidden, response.StatusCode);
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        var target = name is null ? "" : $" \"{name}\"";
        AssertStatus(await response.Content.ReadAsStringAsync(), 403, "Forbidden",
            $"endpointslices.discovery.k8s.io{target} is forbidden: User \"system:serviceaccount:default:default\" cannot {verb} resource \"endpointslices\" in API group \"discovery.k8s.io\" in the namespace \"default\"",
            details: name is null
                ? """{"group":"discovery.k8s.io","kind":"endpointslices"}"""
                : $$"""{"name":"{{name}}","group":"discovery.k8s.io","kind":"endpointslices"}""");
        Assert.Equal(0, api.ListCount);
        Assert.Equal(0, api.ActiveWatches);
    }

    [Theory]
    [InlineData("?fieldSelector=spec.nodeName%3Dn", "\"spec.nodeName\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"")]
    [InlineData("?watch=true&fieldSelector=metadata.name%3Da,status%3Dx", "\"status\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\"")]
    [InlineData("?watch=true&fieldSelector=metadata.name", "invalid selector: 'metadata.name'; can't understand 'metadata.name'")]
    public async Task ListOrWatch_FieldSelectorNotServed_400BadRequestStatus(string query, string message)
    {
        // An EndpointSlice has no field label conversion: only metadata.name and metadata.namespace can be selected.
        await using var api = await SimulatedKubernetesApi.StartAsync();
        using var http = new HttpClient { BaseAddress = api.Url };

        using var response = await http.GetAsync(Collection + query);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        AssertStatus(await response.Content.ReadAsStringAsync(), 400, "BadRequest", message);
        Assert.Equal(0, api.ListCount);
        Assert.Equal(0, api.WatchCount);
    }

    [Fact]
    public async Task SetForbiddenTokens_AuthenticationFirst_RejectedToken401RefusedToken403OtherTokens200()
    {
        await using var api = await SimulatedKubernetesApi.StartAsync("good", "refused");
        api.SetForbiddenTokens("refused", "unknown");
        using var http = new HttpClient { BaseAddress = api.Url };

        async Task<HttpStatusCode> ListWith(string token)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, Collection);
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            using var response = await http.SendAsync(request);
            return response.StatusCode;
        }

        Assert.Equal(HttpStatusCode.Unauthorized, await ListWith("unknown")); // Not accepted: refused before RBAC is asked.
        Assert.Equal(HttpStatusCode.Forbidden, await ListWith("refused"));
        Assert.Equal(HttpStatusCode.OK, await ListWith("good"));
        api.SetForbiddenTokens();
        Assert.Equal(HttpStatusCode.OK, await ListWith("refused"));
    }

    [Fact]
    public async Task KubernetesClient_TokenForbidden_ListThrowsHttpOperationExceptionWith403AndTheStatus()
    {
        await using var api = await SimulatedKubernetesApi.StartAsync();
        api.SetForbiddenTokens("refused");
        using var client = new k8s.Kubernetes(new KubernetesClientConfiguration { Host = api.Url.ToString(), AccessToken = "refused" });

        var error = await Assert.ThrowsAsync<HttpOperationException>(() => client.DiscoveryV1.ListNamespacedEndpointSliceAsync("default"));

        Assert.Equal(HttpStatusCode.Forbidden, error.Response.StatusCode);
        var status = KubernetesJson.Deserialize<V1Status>(error.Response.Content);
        Assert.Equal(("Status", "Failure", 403, "Forbidden"), (status.Kind, status.Status, status.Code, status.Reason));
        Assert.StartsWith("endpointslices.discovery.k8s.io is forbidden: User ", status.Message, StringComparison.Ordinal);
        Assert.Equal(("discovery.k8s.io", "endpointslices"), (status.Details.Group, status.Details.Kind));
    }

    [Fact]
    public async Task Get_SliceThatDoesNotExist_404NotFoundStatusNamingTheObject()
    {
        // kube-apiserver's answer for a named object it does not have (errors.NewNotFound), details included; here the slice
        // exists, but in another namespace.
        await using var api = await SimulatedKubernetesApi.StartAsync();
        api.Apply("other", new V1EndpointSlice { Metadata = new V1ObjectMeta { Name = "a" }, AddressType = "IPv4", Endpoints = [] });
        using var http = new HttpClient { BaseAddress = api.Url };

        using var response = await http.GetAsync(Collection + "/a");

        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        AssertStatus(await response.Content.ReadAsStringAsync(), 404, "NotFound", "endpointslices.discovery.k8s.io \"a\" not found",
            details: """{"name":"a","group":"discovery.k8s.io","kind":"endpointslices"}""");
    }

    [Fact]
    public async Task KubernetesClient_ReadSliceThatDoesNotExist_ThrowsHttpOperationExceptionWith404AndTheStatus()
    {
        await using var api = await SimulatedKubernetesApi.StartAsync();
        using var client = new k8s.Kubernetes(new KubernetesClientConfiguration { Host = api.Url.ToString() });

        var error = await Assert.ThrowsAsync<HttpOperationException>(() => client.DiscoveryV1.ReadNamespacedEndpointSliceAsync("missing", "default"));

        Assert.Equal(HttpStatusCode.NotFound, error.Response.StatusCode);
        var status = KubernetesJson.Deserialize<V1Status>(error.Response.Content);
        Assert.Equal(("Status", "Failure", 404, "NotFound", "endpointslices.discovery.k8s.io \"missing\" not found"),
            (status.Kind, status.Status, status.Code, status.Reason, status.Message));
        Assert.Equal(("missing", "discovery.k8s.io", "endpointslices"), (status.Details.Name, status.Details.Group, status.Details.Kind));
    }

    [Fact]
    public async Task Watch_CompactedResourceVersion_200ThenOneErrorEventWithA410ExpiredStatusThenTheEnd()
    {
        // kube-apiserver's watch cache answers a WATCH from a resourceVersion it no longer has this way, not with HTTP 410.
        await using var api = await CompactedApiAsync();
        using var http = new HttpClient { BaseAddress = api.Url };

        using var response = await http.GetAsync(Collection + "?watch=true&resourceVersion=1000", HttpCompletionOption.ResponseHeadersRead);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var body = await Poll.WithTimeout(response.Content.ReadAsStringAsync(), "the watch stream to end after its ERROR event");
        var line = Assert.Single(body.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        using var watchEvent = JsonDocument.Parse(line);
        Assert.Equal(["type", "object"], watchEvent.RootElement.EnumerateObject().Select(p => p.Name));
        Assert.Equal("ERROR", watchEvent.RootElement.GetProperty("type").GetString());
        AssertStatus(watchEvent.RootElement.GetProperty("object").GetRawText(), 410, "Expired", "too old resource version: 1000 (1001)");
        Assert.Equal(0, api.ActiveWatches);
    }

    [Fact]
    public async Task Watch_CompactedResourceVersionGoneAsHttpStatus_410WithTheExpiredStatus()
    {
        await using var api = await CompactedApiAsync();
        api.GoneAsHttpStatus = true;
        using var http = new HttpClient { BaseAddress = api.Url };

        using var response = await http.GetAsync(Collection + "?watch=true&resourceVersion=1000");

        Assert.Equal(HttpStatusCode.Gone, response.StatusCode);
        AssertStatus(await response.Content.ReadAsStringAsync(), 410, "Expired", "too old resource version: 1000 (1001)");
    }

    [Fact]
    public async Task KubernetesClient_TokenRejected_ListThrowsHttpOperationExceptionWith401AndTheStatus()
    {
        await using var api = await SimulatedKubernetesApi.StartAsync("good");
        using var client = new k8s.Kubernetes(new KubernetesClientConfiguration { Host = api.Url.ToString(), AccessToken = "bad" });

        var error = await Assert.ThrowsAsync<HttpOperationException>(() => client.DiscoveryV1.ListNamespacedEndpointSliceAsync("default"));

        Assert.Equal(HttpStatusCode.Unauthorized, error.Response.StatusCode);
        var status = KubernetesJson.Deserialize<V1Status>(error.Response.Content);
        Assert.Equal(("Status", "v1", "Failure", 401, "Unauthorized", "Unauthorized"),
            (status.Kind, status.ApiVersion, status.Status, status.Code, status.Reason, status.Message));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task KubernetesClient_WatchFromACompactedResourceVersion_Gets410Expired(bool goneAsHttpStatus)
    {
        await using var api = await CompactedApiAsync();
        api.GoneAsHttpStatus = goneAsHttpStatus;
        using var client = new k8s.Kubernetes(new KubernetesClientConfiguration { Host = api.Url.ToString() });
        using var deadline = new CancellationTokenSource(Poll.DefaultTimeout);
        var streamErrors = new List<Exception>();

        var watch = Task.Run(async () =>
        {
            var events = new List<WatchEventType>();
            await foreach (var (type, _) in client.DiscoveryV1.WatchListNamespacedEndpointSliceAsync(
                "default", resourceVersion: "1000", onError: streamErrors.Add, cancellationToken: deadline.Token))
            {
                events.Add(type);
            }

            return events;
        });

        if (goneAsHttpStatus)
        {
            // The client throws the HTTP status as it does for a failed LIST.
            var error = await Assert.ThrowsAsync<HttpOperationException>(() => Poll.WithTimeout(watch, "the watch to fail"));
            Assert.Equal(HttpStatusCode.Gone, error.Response.StatusCode);
            var status = KubernetesJson.Deserialize<V1Status>(error.Response.Content);
            Assert.Equal((410, "Expired"), (status.Code, status.Reason));
        }
        else
        {
            // The client hands the in-stream ERROR event's Status to onError and the stream ends.
            var events = await Poll.WithTimeout(watch, "the watch stream to end after its ERROR event");
            Assert.DoesNotContain(events, t => t != WatchEventType.Error);
            var error = Assert.IsType<KubernetesException>(Assert.Single(streamErrors));
            Assert.Equal(("Status", "Failure", 410, "Expired", "too old resource version: 1000 (1001)"),
                (error.Status.Kind, error.Status.Status, error.Status.Code, error.Status.Reason, error.Status.Message));
        }
    }

    /// <summary>An API server at resourceVersion 1001 whose history starts after it: a watch from 1000 is too old.</summary>
    private static async Task<SimulatedKubernetesApi> CompactedApiAsync()
    {
        var api = await SimulatedKubernetesApi.StartAsync();
        api.Apply("default", new V1EndpointSlice
        {
            Metadata = new V1ObjectMeta { Name = "a", Labels = new Dictionary<string, string> { ["kubernetes.io/service-name"] = "svc" } },
            AddressType = "IPv4",
            Endpoints = [new V1Endpoint { Addresses = ["10.0.0.1"] }],
        });
        api.Compact();
        return api;
    }

    /// <summary>
    /// The JSON is a failure Status exactly as kube-apiserver writes it:
    /// <c>{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":…,"reason":…,"code":…}</c>, with
    /// <c>"details":…</c> before <c>code</c> when <paramref name="details"/> is given.
    /// </summary>
    private static void AssertStatus(string json, int code, string reason, string message, string? details = null)
    {
        using var document = JsonDocument.Parse(json);
        var root = document.RootElement;
        Assert.Equal(details is null
            ? ["kind", "apiVersion", "metadata", "status", "message", "reason", "code"]
            : ["kind", "apiVersion", "metadata", "status", "message", "reason", "details", "code"], root.EnumerateObject().Select(p => p.Name));
        if (details is not null)
        {
            Assert.Equal(details, root.GetProperty("details").GetRawText());
        }

        Assert.Equal("Status", root.GetProperty("kind").GetString());
        Assert.Equal("v1", root.GetProperty("apiVersion").GetString());
        Assert.Equal("{}", root.GetProperty("metadata").GetRawText());
        Assert.Equal("Failure", root.GetProperty("status").GetString());
        Assert.Equal(message, root.GetProperty("message").GetString());
        Assert.Equal(reason, root.GetProperty("reason").GetString());
        Assert.Equal(code, root.GetProperty("code").GetInt32());
    }
}
