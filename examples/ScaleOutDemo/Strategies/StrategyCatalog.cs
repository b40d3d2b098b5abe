namespace ScaleOutDemo.Strategies;

/// <summary>Every strategy the demo knows, in display order.</summary>
internal static class StrategyCatalog
{
    public static IReadOnlyList<IClientStrategy> All { get; } =
    [
        new NewConnectionPerCallStrategy(),
        new GrpcClientFactoryDefaultsStrategy(),
        new ConnectionRefreshStrategy("refresh", "AddConnectionRefresh(): age 5 s ±10 %, keepalive 2 s + 1 s (demo-scaled defaults)"),
        new ConnectionRefreshStrategy("refresh-k4", "AddConnectionRefresh(o => o.ConnectionsPerEndpoint = 4), same ages", o => o.ConnectionsPerEndpoint = 4),
        new ServerMaxAgeStrategy(),
        new KubernetesResolverStrategy(),
    ];
}
