using Microsoft.Extensions.Logging;

namespace ConnectionRefresh.Server.Internal;

/// <summary>Source-generated log messages of the server-side connection age; event ids are stable.</summary>
internal static partial class ServerConnectionAgeLog
{
    [LoggerMessage(EventId = 1, EventName = "ClosingByAge", Level = LogLevel.Debug,
        Message = "Connection {ConnectionId} reached its maximum age {MaxAge} after {Age}; closing it gracefully (GOAWAY).")]
    public static partial void ClosingByAge(ILogger logger, string connectionId, TimeSpan maxAge, TimeSpan age);

    [LoggerMessage(EventId = 2, EventName = "ClosingByIdle", Level = LogLevel.Debug,
        Message = "Connection {ConnectionId} had no call for {MaxIdle}; closing it gracefully (GOAWAY) at age {Age}.")]
    public static partial void ClosingByIdle(ILogger logger, string connectionId, TimeSpan maxIdle, TimeSpan age);

    [LoggerMessage(EventId = 3, EventName = "GraceExpired", Level = LogLevel.Warning,
        Message = "Connection {ConnectionId} still had {ActiveCalls} running call(s) when the grace period {Grace} ended; aborting it.")]
    public static partial void GraceExpired(ILogger logger, string connectionId, int activeCalls, TimeSpan grace);

    [LoggerMessage(EventId = 4, EventName = "NoLifetimeNotification", Level = LogLevel.Warning,
        Message = "Connection {ConnectionId} has no IConnectionLifetimeNotificationFeature; its age is not limited.")]
    public static partial void NoLifetimeNotification(ILogger logger, string connectionId);

    [LoggerMessage(EventId = 5, EventName = "ClosingCallbackFailed", Level = LogLevel.Error,
        Message = "A callback registered on the closing token of connection {ConnectionId} threw.")]
    public static partial void ClosingCallbackFailed(ILogger logger, string connectionId, Exception exception);

    [LoggerMessage(EventId = 6, EventName = "GraceExpiredCallsNotCounted", Level = LogLevel.Warning,
        Message = "Connection {ConnectionId} was still open when the grace period {Grace} ended; aborting it (its running calls are not counted without services.AddServerConnectionAge(...)).")]
    public static partial void GraceExpiredCallsNotCounted(ILogger logger, string connectionId, TimeSpan grace);

    [LoggerMessage(EventId = 7, EventName = "LingerExpired", Level = LogLevel.Debug,
        Message = "The client of connection {ConnectionId} did not close its side within {MaxLinger} after the GOAWAY; closing the socket.")]
    public static partial void LingerExpired(ILogger logger, string connectionId, TimeSpan maxLinger);

    [LoggerMessage(EventId = 8, EventName = "ClosingRequestedByKestrel", Level = LogLevel.Debug,
        Message = "Kestrel is closing connection {ConnectionId} gracefully (GOAWAY) at age {Age}, application stopping: {Stopping}; firing its closing token.")]
    public static partial void ClosingRequestedByKestrel(ILogger logger, string connectionId, TimeSpan age, bool stopping);
}
