using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Kubernetes.Internal;

/// <summary>Source-generated logs of the resolver; every message names the service and namespace. Stable event ids.</summary>
internal static partial class KubernetesResolverLog
{
    [LoggerMessage(1, LogLevel.Debug, "Kubernetes resolver started for service {Service} in namespace {Namespace}, port {Port}.")]
    public static partial void Started(ILogger logger, string service, string @namespace, string port);

    [LoggerMessage(2, LogLevel.Information, "Service {Service} in namespace {Namespace}: {EndpointCount} endpoints from {SliceCount} EndpointSlices.")]
    public static partial void EndpointsUpdated(ILogger logger, string service, string @namespace, int endpointCount, int sliceCount);

    [LoggerMessage(3, LogLevel.Warning, "Service {Service} in namespace {Namespace}: the Kubernetes API request failed (attempt {Attempt}); keeping {EndpointCount} known endpoints and retrying in {Delay}.")]
    public static partial void RequestFailed(ILogger logger, string service, string @namespace, int attempt, int endpointCount, TimeSpan delay, Exception exception);

    [LoggerMessage(4, LogLevel.Debug, "Service {Service} in namespace {Namespace}: watch restarting ({Reason}).")]
    public static partial void WatchRestarting(ILogger logger, string service, string @namespace, string reason);

    [LoggerMessage(5, LogLevel.Warning, "Service {Service} in namespace {Namespace}: EndpointSlices with no port matching {Port}: {SkippedCount}; their endpoints are not used. Their TCP ports: {SlicePorts}. {Hint}")]
    public static partial void PortNotFound(ILogger logger, string service, string @namespace, int skippedCount, string port, string slicePorts, string hint);

    [LoggerMessage(6, LogLevel.Debug, "Service {Service} in namespace {Namespace}: refresh requested; relisting, as no watch has shown life within {Window}.")]
    public static partial void RefreshRequested(ILogger logger, string service, string @namespace, TimeSpan window);

    [LoggerMessage(7, LogLevel.Debug, "Service {Service} in namespace {Namespace}: resolver stopped.")]
    public static partial void Stopped(ILogger logger, string service, string @namespace);

    [LoggerMessage(8, LogLevel.Error, "Service {Service} in namespace {Namespace}: the resolver loop failed unexpectedly.")]
    public static partial void LoopFailed(ILogger logger, string service, string @namespace, Exception exception);

    [LoggerMessage(10, LogLevel.Error, "Service {Service} in namespace {Namespace}: the resolver is misconfigured and cannot talk to the Kubernetes API: {Reason} Calls fail with Unavailable until this is fixed; the resolver keeps checking with its backoff (up to {MaxBackoff}) and logs further attempts at Debug.")]
    public static partial void Misconfigured(ILogger logger, string service, string @namespace, string reason, TimeSpan maxBackoff);

    [LoggerMessage(11, LogLevel.Debug, "Service {Service} in namespace {Namespace}: still misconfigured (attempt {Attempt}); retrying in {Delay}.")]
    public static partial void StillMisconfigured(ILogger logger, string service, string @namespace, int attempt, TimeSpan delay, Exception exception);

    [LoggerMessage(12, LogLevel.Warning, "Service {Service} in namespace {Namespace}: no EndpointSlice is labelled {Label}={Service}, so calls find no endpoints. Check the target: does Service '{Service}' exist in namespace {TargetNamespace}? (A Service without a selector has EndpointSlices only if someone creates them.)")]
    public static partial void NoEndpointSlices(ILogger logger, string service, string @namespace, string label, string targetNamespace);

    [LoggerMessage(9, LogLevel.Debug, "Service {Service} in namespace {Namespace}: refresh requested; answered by the watch, which showed life {SinceActivity} ago, so no relist.")]
    public static partial void RefreshAnsweredByWatch(ILogger logger, string service, string @namespace, TimeSpan sinceActivity);

    [LoggerMessage(13, LogLevel.Warning, "Service {Service} in namespace {Namespace}: the channel sets DisableResolverServiceConfig and its ServiceConfig names no load-balancing policy, so grpc-dotnet uses pick_first and sends every call to one pod. To balance per call, leave DisableResolverServiceConfig false (the resolver then makes round_robin the default) or add a RoundRobinConfig to the channel's ServiceConfig.LoadBalancingConfigs.")]
    public static partial void PickFirstOnly(ILogger logger, string service, string @namespace);
}
