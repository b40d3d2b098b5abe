using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace ConnectionRefresh.Server.Internal;

/// <summary>
/// Puts the connection age middleware on a Kestrel endpoint once: a later call for the same endpoint replaces the
/// options of the earlier one instead of adding a second middleware (which would track every connection twice, the
/// outer one blind to the calls counted by the inner one). So endpoint defaults followed by the endpoint's own call
/// leave the endpoint's own options, as with Kestrel's other endpoint settings.
/// </summary>
/// <remarks>
/// Thread safety: Kestrel's options are configured on one thread; the table is thread-safe, and an endpoint's
/// options are read when Kestrel builds the endpoint's connection pipeline, after all of its configuration.
/// </remarks>
internal static class EndpointConnectionAge
{
    public const string LoggerCategory = "ConnectionRefresh.Server";

    // Weak keys: ListenOptions live as long as Kestrel's options (or, in tests, a hand-made instance).
    private static readonly ConditionalWeakTable<ListenOptions, StrongBox<ServerConnectionAgeOptions>> Applied = new();

    public static void Apply(ListenOptions listenOptions, ServerConnectionAgeOptions options)
    {
        if (Applied.TryGetValue(listenOptions, out var applied))
        {
            applied.Value = options;
            return;
        }

        var current = new StrongBox<ServerConnectionAgeOptions>(options);
        Applied.Add(listenOptions, current);

        // The factory runs when Kestrel binds the endpoint, after all of its configuration: the last options and
        // Protocols are final then (endpoint defaults, and so a call from them, run before the endpoint's own
        // callback sets Protocols).
        listenOptions.Use(next => Create(next, listenOptions, current.Value!).OnConnectionAsync);
    }

    private static ServerConnectionAgeMiddleware Create(ConnectionDelegate next, ListenOptions listenOptions, ServerConnectionAgeOptions options)
    {
        // ApplicationServices is null only for ListenOptions outside a host (hand-made in tests).
        var services = (IServiceProvider?)listenOptions.ApplicationServices;
        var settings = ConnectionAgeSettings.From(
            options,
            callsCounted: services?.GetService<ServerConnectionAgeRegistration>() is not null,
            listenOptions.Protocols);
        var time = services?.GetService<TimeProvider>() ?? TimeProvider.System;
        var metrics = services?.GetService<ServerConnectionAgeMetrics>()
            ?? new ServerConnectionAgeMetrics(services?.GetService<IMeterFactory>());
        var logger = (services?.GetService<ILoggerFactory>() ?? NullLoggerFactory.Instance).CreateLogger(LoggerCategory);
        return new ServerConnectionAgeMiddleware(
            next,
            settings,
            time,
            metrics,
            logger,
            silentCloser: SilentConnectionCloser.For(services?.GetService<IHostApplicationLifetime>()),
            hostStopping: HostStopping.From(services));
    }
}
