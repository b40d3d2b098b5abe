using ConnectionRefresh.Server;
using ConnectionRefresh.Server.Internal;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace Microsoft.AspNetCore.Hosting;

/// <summary>
/// Turns on the server-side connection age (<see cref="ServerConnectionAgeOptions"/>) for one Kestrel endpoint
/// (<see cref="ListenOptions"/>) or for all of them (<see cref="KestrelServerOptions"/>).
/// </summary>
/// <remarks>
/// The options are read and validated when Kestrel is configured, at start-up (for a <c>WebApplication</c>, in
/// <c>builder.Build()</c>): a bad value stops the application with a message that names the key, the value and the
/// allowed range, and so does a section that is not an object or, given by path, does not exist.
/// <see cref="ServerConnectionAgeOptions.MaxConnectionIdle"/> also needs
/// <c>services.AddServerConnectionAge(...)</c>, which counts the calls of each connection.
/// An endpoint has at most one connection age: a later call for the same endpoint (for example the endpoint's own
/// <c>listen.UseServerConnectionAge(...)</c> after endpoint defaults that already applied it) replaces the options of
/// the earlier one.
/// </remarks>
public static class ServerConnectionAgeKestrelExtensions
{
    /// <summary>
    /// Limits the age of the endpoint's connections with the options registered by
    /// <c>services.AddServerConnectionAge(...)</c>, or, when there are none, with the
    /// <c>ConnectionRefresh:Server</c> section of the application's configuration (defaults when it is absent; a section
    /// that is not an object fails).
    /// </summary>
    /// <param name="listenOptions">The endpoint.</param>
    /// <returns><paramref name="listenOptions"/>.</returns>
    public static ListenOptions UseServerConnectionAge(this ListenOptions listenOptions)
    {
        ArgumentNullException.ThrowIfNull(listenOptions);
        return listenOptions.UseServerConnectionAge(ServerConnectionAgeOptionsLoader.FromServices(listenOptions.ApplicationServices));
    }

    /// <summary>Limits the age of the endpoint's connections with options set in code.</summary>
    /// <param name="listenOptions">The endpoint.</param>
    /// <param name="configure">Changes the default options.</param>
    /// <returns><paramref name="listenOptions"/>.</returns>
    public static ListenOptions UseServerConnectionAge(this ListenOptions listenOptions, Action<ServerConnectionAgeOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(listenOptions);
        ArgumentNullException.ThrowIfNull(configure);
        return listenOptions.UseServerConnectionAge(ServerConnectionAgeOptionsLoader.FromAction(configure));
    }

    /// <summary>Limits the age of the endpoint's connections with options bound from a configuration section.</summary>
    /// <param name="listenOptions">The endpoint.</param>
    /// <param name="section">
    /// The section, for example <c>configuration.GetSection("ConnectionRefresh:Server")</c>. It must exist (a misspelled
    /// path fails at start-up, naming what is there) and be an object of settings; unknown keys are rejected. A section
    /// written as <c>{}</c> in the application's configuration (the <c>IConfiguration</c> in its services) gives the defaults.
    /// </param>
    /// <returns><paramref name="listenOptions"/>.</returns>
    public static ListenOptions UseServerConnectionAge(this ListenOptions listenOptions, IConfigurationSection section)
    {
        ArgumentNullException.ThrowIfNull(listenOptions);
        ArgumentNullException.ThrowIfNull(section);
        return listenOptions.UseServerConnectionAge(ServerConnectionAgeOptionsLoader.FromSection(section, listenOptions.ApplicationServices));
    }

    /// <summary>
    /// Limits the age of the connections of every endpoint configured after this call (in code, in configuration,
    /// or by URL), with the options of <see cref="UseServerConnectionAge(ListenOptions)"/>.
    /// </summary>
    /// <remarks>
    /// This uses <see cref="KestrelServerOptions.ConfigureEndpointDefaults(Action{ListenOptions})"/>, which holds
    /// one callback: a later <c>ConfigureEndpointDefaults</c> call replaces it, this call replaces an earlier one, and
    /// endpoints added before this call are not affected. If you set endpoint defaults yourself, call
    /// <see cref="UseServerConnectionAge(ListenOptions)"/> inside your callback instead.
    /// With <c>services.AddServerConnectionAge(...)</c> registered, the host fails to start (once Kestrel has bound its
    /// endpoints) when no endpoint received the connection age, with a message naming the likely causes. It cannot tell
    /// when only some endpoints did (those added before this call), nor when this call replaced endpoint defaults set
    /// before it: Kestrel exposes neither its endpoints nor the callback. Without the registration nothing is checked.
    /// </remarks>
    /// <param name="options">Kestrel's options.</param>
    /// <returns><paramref name="options"/>.</returns>
    public static KestrelServerOptions UseServerConnectionAge(this KestrelServerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return options.UseServerConnectionAge(ServerConnectionAgeOptionsLoader.FromServices(options.ApplicationServices));
    }

    /// <summary>
    /// Limits the age of the connections of every endpoint configured after this call, with options set in code.
    /// See <see cref="UseServerConnectionAge(KestrelServerOptions)"/> for how endpoint defaults apply.
    /// </summary>
    /// <param name="options">Kestrel's options.</param>
    /// <param name="configure">Changes the default options.</param>
    /// <returns><paramref name="options"/>.</returns>
    public static KestrelServerOptions UseServerConnectionAge(this KestrelServerOptions options, Action<ServerConnectionAgeOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(configure);
        return options.UseServerConnectionAge(ServerConnectionAgeOptionsLoader.FromAction(configure));
    }

    /// <summary>
    /// Limits the age of the connections of every endpoint configured after this call, with options bound from a
    /// configuration section. See <see cref="UseServerConnectionAge(KestrelServerOptions)"/> for how endpoint
    /// defaults apply.
    /// </summary>
    /// <param name="options">Kestrel's options.</param>
    /// <param name="section">
    /// The section, for example <c>configuration.GetSection("ConnectionRefresh:Server")</c>. It must exist (a misspelled
    /// path fails at start-up, naming what is there) and be an object of settings; unknown keys are rejected. A section
    /// written as <c>{}</c> in the application's configuration (the <c>IConfiguration</c> in its services) gives the defaults.
    /// </param>
    /// <returns><paramref name="options"/>.</returns>
    public static KestrelServerOptions UseServerConnectionAge(this KestrelServerOptions options, IConfigurationSection section)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(section);
        return options.UseServerConnectionAge(ServerConnectionAgeOptionsLoader.FromSection(section, options.ApplicationServices));
    }

    private static KestrelServerOptions UseServerConnectionAge(this KestrelServerOptions options, ServerConnectionAgeOptions ageOptions)
    {
        // Checked now, at configuration time, rather than for the first endpoint.
        ThrowIfIdleWithoutCallCounting(options.ApplicationServices, ageOptions);
        options.ConfigureEndpointDefaults(listenOptions => listenOptions.UseServerConnectionAge(ageOptions));

        // Endpoint defaults can be lost in silence (replaced, or set after every endpoint was created): with
        // AddServerConnectionAge registered, start-up fails when no endpoint received the age.
        ((IServiceProvider?)options.ApplicationServices)?.GetService<KestrelEndpointDefaultsCheck>()?.KestrelWideCalled();
        return options;
    }

    private static ListenOptions UseServerConnectionAge(this ListenOptions listenOptions, ServerConnectionAgeOptions options)
    {
        // ApplicationServices is null only for ListenOptions outside a host (hand-made in tests).
        var services = (IServiceProvider?)listenOptions.ApplicationServices;
        ThrowIfIdleWithoutCallCounting(services, options);
        EndpointConnectionAge.Apply(listenOptions, options);
        services?.GetService<KestrelEndpointDefaultsCheck>()?.EndpointReceived();
        return listenOptions;
    }

    private static void ThrowIfIdleWithoutCallCounting(IServiceProvider? services, ServerConnectionAgeOptions options)
    {
        if (options.MaxConnectionIdle != Timeout.InfiniteTimeSpan && services?.GetService<ServerConnectionAgeRegistration>() is null)
        {
            throw new InvalidOperationException(
                $"{nameof(ServerConnectionAgeOptions.MaxConnectionIdle)} is {options.MaxConnectionIdle:c}, but idle connections can only be "
                + "told apart from busy ones when the calls of each connection are counted: call "
                + "services.AddServerConnectionAge(...) when registering services.");
        }
    }
}
