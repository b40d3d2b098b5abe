namespace ConnectionRefresh.Internal;

/// <summary>Why a connection stopped taking new calls; the <c>reason</c> tag of the retired counter.</summary>
internal enum RetirementReason
{
    /// <summary>It reached its jittered <see cref="ConnectionRefreshOptions.MaxConnectionAge"/>.</summary>
    Age,

    /// <summary>It took <see cref="ConnectionRefreshOptions.MaxRequestsPerConnection"/> calls.</summary>
    RequestCount,

    /// <summary>A call on it failed because the connection died (keepalive timeout, reset).</summary>
    ConnectionFailure,

    /// <summary>The client's handler was disposed.</summary>
    Disposed,
}
