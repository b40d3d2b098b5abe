using ConnectionRefresh.Testing;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>
/// A credential rotation as the API server sees it, once the test has changed the token at its source (the service account's
/// file, a kubeconfig's tokenFile, an exec plugin's output).
/// </summary>
internal static class TokenRotation
{
    /// <summary>
    /// The API server accepts only <paramref name="newToken"/> from now on and ends the open watches (as on a server-side
    /// timeout): the resolver's next requests must carry the new token.
    /// </summary>
    public static void Revoke(SimulatedKubernetesApi api, string newToken)
    {
        api.SetAcceptedTokens(newToken);
        api.CloseWatches();
    }

    /// <summary>
    /// <see cref="Revoke"/>, then greeter's slice "a" changes to <paramref name="ips"/> (two of them, port 8080): asserts that
    /// the change is resolved, and that the first request carried <paramref name="oldToken"/> and the last one <paramref name="newToken"/>.
    /// </summary>
    public static async Task AssertAChangeIsResolvedWithTheNewTokenAsync(SimulatedKubernetesApi api, FactoryResolverHarness harness,
        string oldToken, string newToken, string[] ips)
    {
        Revoke(api, newToken);
        api.Apply("default", Slices.Ready("a", "greeter", ips, 8080));

        await Poll.UntilAsync(() => harness.LastAddresses?.Count == 2, $"resolved the change with {newToken}");
        Assert.Equal(oldToken, api.SeenTokens.First());
        Assert.Equal(newToken, api.SeenTokens.Last());
    }
}
