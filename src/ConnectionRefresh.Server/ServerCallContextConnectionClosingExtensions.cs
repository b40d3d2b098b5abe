using Grpc.Core;

namespace ConnectionRefresh.Server;

/// <summary>Reaches the <see cref="IConnectionClosingFeature"/> of the connection that carries a gRPC call.</summary>
public static class ServerCallContextConnectionClosingExtensions
{
    /// <summary>
    /// The <see cref="IConnectionClosingFeature"/> of the call's connection, or <see langword="null"/> when the
    /// endpoint does not use the server-side connection age, or the call is not served by ASP.NET Core (a context made
    /// for a unit test, with no <c>HttpContext</c>).
    /// </summary>
    /// <param name="context">The call's context.</param>
    public static IConnectionClosingFeature? GetConnectionClosingFeature(this ServerCallContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        try
        {
            return context.GetHttpContext().Features.Get<IConnectionClosingFeature>();
        }
        catch (InvalidOperationException)
        {
            // GetHttpContext throws for a context without an HttpContext (a service's unit tests): no connection there.
            return null;
        }
    }

    /// <summary>
    /// A token cancelled when the server starts to close the call's connection gracefully, by its age or idleness or
    /// because the server is shutting down (see <see cref="IConnectionClosingFeature.ConnectionClosing"/>);
    /// <see cref="CancellationToken.None"/> when the
    /// endpoint does not use the server-side connection age or the call is not served by ASP.NET Core. A streaming
    /// method can end its stream when it fires:
    /// <code>
    /// using var stop = CancellationTokenSource.CreateLinkedTokenSource(
    ///     context.CancellationToken, context.GetConnectionClosingToken());
    /// </code>
    /// </summary>
    /// <param name="context">The call's context.</param>
    public static CancellationToken GetConnectionClosingToken(this ServerCallContext context) =>
        context.GetConnectionClosingFeature()?.ConnectionClosing ?? CancellationToken.None;
}
