using Microsoft.Extensions.Hosting;

namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// Fails start-up when Kestrel runs with <c>services.AddServerConnectionAge(...)</c> registered but no endpoint received
/// the connection age: <c>UseServerConnectionAge</c> was never called on Kestrel's options or an endpoint (the
/// registration alone changes no connection), or <c>kestrel.UseServerConnectionAge(...)</c> was called but reached no
/// endpoint. That call works through <c>KestrelServerOptions.ConfigureEndpointDefaults</c>, which holds one callback and runs
/// it only for endpoints created after it is set: a later <c>ConfigureEndpointDefaults</c> replaces it, and endpoints
/// created before it never see it, both in silence. Registered by <c>services.AddServerConnectionAge(...)</c>; without
/// it there is nothing to record in, and nothing is checked.
/// </summary>
/// <remarks>
/// <para>
/// The check runs in <see cref="StartedAsync"/>: the host calls it after every hosted service's <c>StartAsync</c>,
/// so after Kestrel has bound its endpoints (endpoints from URLs and configuration receive their defaults only then),
/// and an exception there makes <c>IHost.StartAsync</c>, and so <c>app.Run()</c>, throw. A plain <c>StartAsync</c>
/// would be too early (for a <c>WebApplication</c> it runs before Kestrel's), and <c>ApplicationStarted</c> callbacks
/// only log what they throw. Hosts that do not call <see cref="StartedAsync"/> (the obsolete <c>WebHost</c>) and
/// servers other than Kestrel (<c>TestServer</c> never configures Kestrel's options) record and check nothing: that
/// Kestrel runs is recorded when its options are configured (<see cref="KestrelConfigured"/>).
/// </para>
/// <para>
/// Only "no endpoint" is an error: some endpoints without the age (created before the call) may be deliberate, and
/// Kestrel does not expose its list of endpoints to compare with. Nor can a replaced earlier endpoint-defaults callback
/// of the application be detected: Kestrel does not expose the callback.
/// </para>
/// <para>Thread safety: the flags are volatile; they are set while Kestrel is configured and binds, and read after.</para>
/// </remarks>
internal sealed class KestrelEndpointDefaultsCheck : IHostedLifecycleService
{
    private volatile bool _kestrelConfigured;
    private volatile bool _kestrelWideCalled;
    private volatile bool _endpointReceived;

    /// <summary>Records that Kestrel's options were configured: Kestrel is the server.</summary>
    public void KestrelConfigured() => _kestrelConfigured = true;

    /// <summary>Records a call of <c>kestrel.UseServerConnectionAge(...)</c>.</summary>
    public void KestrelWideCalled() => _kestrelWideCalled = true;

    /// <summary>Records that an endpoint received the connection age, by endpoint defaults or its own call.</summary>
    public void EndpointReceived() => _endpointReceived = true;

    public Task StartedAsync(CancellationToken cancellationToken)
    {
        if (_endpointReceived)
        {
            return Task.CompletedTask;
        }

        if (_kestrelConfigured && !_kestrelWideCalled)
        {
            throw new InvalidOperationException(
                "services.AddServerConnectionAge(...) is registered, but UseServerConnectionAge was not called for any Kestrel "
                + "endpoint, so no connection would be closed by age or idleness (the registration alone changes no "
                + "connection). Fix: builder.WebHost.ConfigureKestrel(kestrel => kestrel.UseServerConnectionAge()) for every "
                + "endpoint, or listen.UseServerConnectionAge() on an endpoint (kestrel.Listen(..., listen => "
                + "listen.UseServerConnectionAge())).");
        }

        if (_kestrelWideCalled)
        {
            throw new InvalidOperationException(
                "kestrel.UseServerConnectionAge(...) was called, but no Kestrel endpoint received the connection age, so no "
                + "connection would be closed by age or idleness. The call sets Kestrel's endpoint defaults, which hold one "
                + "callback and apply only to endpoints created after it: either a later ConfigureEndpointDefaults(...) "
                + "replaced it, or every endpoint was created (kestrel.Listen...) before the call. Fix: call "
                + "listen.UseServerConnectionAge() inside your own ConfigureEndpointDefaults callback, or on each endpoint "
                + "(kestrel.Listen(..., listen => listen.UseServerConnectionAge())); or make kestrel.UseServerConnectionAge() "
                + "the first call, before creating endpoints. Moving it after your ConfigureEndpointDefaults would replace "
                + "your callback instead.");
        }

        return Task.CompletedTask;
    }

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
