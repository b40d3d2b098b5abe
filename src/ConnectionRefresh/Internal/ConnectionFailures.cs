using System.Net.Http;
using System.Net.Sockets;

namespace ConnectionRefresh.Internal;

/// <summary>
/// Recognises calls that failed because their connection died, retires that connection, and makes such
/// failures reach gRPC callers as <c>StatusCode.Unavailable</c> (as grpc-go and grpc-java report them), so
/// that retry policies retry them. grpc-dotnet maps any HttpProtocolException in the chain by its HTTP/2
/// error code (a keepalive timeout becomes <c>Internal</c>), so such an exception is replaced by one without it
/// (of the type SocketsHttpHandler threw: <see cref="HttpRequestException"/> before the response, an IOException while
/// reading it) around an <see cref="HttpIOException"/> whose message keeps the original text; a call cut by DrainTimeout
/// gets the same types. A connect timeout, which
/// SocketsHttpHandler reports as a cancellation, is made a connection failure (<see cref="HttpRequestException"/>) too.
/// A server's HTTP_1_1_REQUIRED is none of these: it is logged once per connection and the call's error is left as it is.
/// </summary>
internal static class ConnectionFailures
{
    private const long Http11RequiredErrorCode = 0xd;

    public static Exception? OnCallFailed(
        Exception exception,
        ConnectionSlot slot,
        HandlerGeneration generation,
        ConnectionRefreshTelemetry telemetry,
        bool beforeResponse,
        CancellationToken callerToken)
    {
        if (generation.CutToken.IsCancellationRequested && !callerToken.IsCancellationRequested)
        {
            return CutByDrainTimeout(exception, beforeResponse);
        }

        Exception? replacement;
        if (IsConnectTimeout(exception, callerToken))
        {
            // What SocketsHttpHandler throws for other connect failures (plain HttpClient users expect it); the
            // IOException inside is what makes grpc-dotnet report Unavailable.
            replacement = new HttpRequestException(
                HttpRequestError.ConnectionError,
                "Could not connect to the server within ConnectionRefresh's ConnectTimeout.",
                new HttpIOException(HttpRequestError.ConnectionError, exception.InnerException!.Message, exception));
        }
        else if (exception is OperationCanceledException)
        {
            return null;
        }
        else if (IsHttp11Required(exception))
        {
            // The server (or a proxy) refuses HTTP/2: a misconfiguration, not a lost connection. Retiring would only
            // redial into the same answer, and Unavailable would make retry policies do so too; the call keeps its
            // own error (grpc-dotnet reports Internal, as the gRPC spec maps HTTP_1_1_REQUIRED).
            if (generation.TryReportHttp11Required())
            {
                telemetry.Http11Required(exception);
            }

            return null;
        }
        else if (!IsConnectionLoss(exception, out var protocolError))
        {
            return null;
        }
        else
        {
            replacement = protocolError is null ? null : ConnectionLost(exception, protocolError);
        }

        if (generation.TryReportFailure())
        {
            telemetry.ConnectionFailed(exception);
        }

        slot.Retire(generation, RetirementReason.ConnectionFailure);
        return replacement;
    }

    /// <summary>
    /// SocketsHttpHandler reports its ConnectTimeout as a cancellation (with a TimeoutException inside), which
    /// grpc-dotnet would report as <c>Cancelled</c> although nobody cancelled the call.
    /// </summary>
    internal static bool IsConnectTimeout(Exception exception, CancellationToken callerToken)
        => exception is OperationCanceledException { InnerException: TimeoutException } && !callerToken.IsCancellationRequested;

    /// <summary>
    /// The replacement for a lost connection whose failure carries an HttpProtocolException. Before the response
    /// (in SendAsync) SocketsHttpHandler throws an <see cref="HttpRequestException"/>, which HttpClient users and outer
    /// handlers (AddStandardResilienceHandler, Polly's HandleTransientHttpError) treat as transient and retry, so the
    /// replacement is one too; while the body is read it throws IOExceptions, so an <see cref="HttpIOException"/> fits.
    /// </summary>
    private static Exception ConnectionLost(Exception exception, HttpProtocolException protocolError)
    {
        var lost = new HttpIOException(HttpRequestError.ConnectionError, $"The connection to the server was lost: {protocolError.Message}");
        return exception is HttpRequestException ? new HttpRequestException(HttpRequestError.ConnectionError, lost.Message, lost) : lost;
    }

    /// <summary>
    /// The failure of a call that DrainTimeout cut. As for a lost connection, its type depends on where the call was:
    /// before the response (in SendAsync) an <see cref="HttpRequestException"/>, which outer handlers retry, around an
    /// <see cref="HttpIOException"/>, which grpc-dotnet maps to <c>Unavailable</c>; while the body is read, the
    /// <see cref="HttpIOException"/> alone.
    /// </summary>
    public static Exception CutByDrainTimeout(Exception exception, bool beforeResponse)
    {
        var cut = new HttpIOException(
            HttpRequestError.Unknown,
            $"The call ran longer than ConnectionRefresh's DrainTimeout on a retired connection and was cut ({exception.GetType().Name}: {exception.Message}).");
        return beforeResponse ? new HttpRequestException(HttpRequestError.Unknown, cut.Message, cut) : cut;
    }

    /// <summary>
    /// True for failures of the connection as a whole: socket errors, an aborted connection (keepalive
    /// timeout, GOAWAY with an error), the connection closing under a running call. A stream that the server
    /// reset on its own (RST_STREAM) is not one: the connection is fine.
    /// </summary>
    internal static bool IsConnectionLoss(Exception exception, out HttpProtocolException? protocolError)
    {
        protocolError = null;
        for (var current = exception; current is not null; current = current.InnerException)
        {
            switch (current)
            {
                case HttpProtocolException { ErrorCode: Http11RequiredErrorCode }:
                    return false; // the server refuses HTTP/2: the connection was fine
                case HttpProtocolException protocol when IsStreamReset(protocol):
                    return false;
                case HttpProtocolException protocol:
                    protocolError = protocol;
                    return true;
                case SocketException:
                    return true;
                case HttpIOException io when io.HttpRequestError is HttpRequestError.ResponseEnded or HttpRequestError.ConnectionError:
                    return true;
                case HttpRequestException request when request.HttpRequestError is HttpRequestError.ConnectionError:
                    return true;
                default:
                    break;
            }
        }

        return false;
    }

    /// <summary>
    /// True when the server answered with HTTP/2 error HTTP_1_1_REQUIRED, as a GOAWAY (SocketsHttpHandler retries
    /// the request on new connections, then throws an HttpRequestException around an HttpProtocolException with
    /// that code) or as a stream reset.
    /// </summary>
    internal static bool IsHttp11Required(Exception exception)
    {
        for (var current = exception; current is not null; current = current.InnerException)
        {
            if (current is HttpProtocolException { ErrorCode: Http11RequiredErrorCode })
            {
                return true;
            }
        }

        return false;
    }

    // SocketsHttpHandler raises stream-level resets and connection-level errors as the same type; only the
    // message tells them apart ("The HTTP/2 server reset the stream ...").
    private static bool IsStreamReset(HttpProtocolException exception)
        => exception.Message.Contains("reset the stream", StringComparison.OrdinalIgnoreCase);
}
