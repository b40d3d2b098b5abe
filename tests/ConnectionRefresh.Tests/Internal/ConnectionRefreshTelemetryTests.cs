using ConnectionRefresh.Internal;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;

namespace ConnectionRefresh.Tests.Internal;

public sealed class ConnectionRefreshTelemetryTests
{
    [Fact]
    public void Retired_LogsReasonAndCountsWithClientTag()
    {
        using var metrics = new ConnectionRefreshMetrics(null);
        using var retired = new MetricCollector<long>(metrics.Retired);
        var logger = new FakeLogger();
        var telemetry = new ConnectionRefreshTelemetry("greeter", metrics, logger);

        telemetry.Retired(RetirementReason.RequestCount);

        var record = Assert.Single(logger.Collector.GetSnapshot());
        Assert.Equal((2, LogLevel.Debug), (record.Id.Id, record.Level));
        Assert.Contains("'greeter'", record.Message, StringComparison.Ordinal);
        Assert.Contains("RequestCount", record.Message, StringComparison.Ordinal);
        var measurement = Assert.Single(retired.GetMeasurementSnapshot());
        Assert.Equal("greeter", measurement.Tags["client"]);
        Assert.Equal("request_count", measurement.Tags["reason"]);
    }

    [Fact]
    public void AgeRestarted_LogsDebugEvent7NamingTheClient()
    {
        using var metrics = new ConnectionRefreshMetrics(null);
        var logger = new FakeLogger();

        new ConnectionRefreshTelemetry("greeter", metrics, logger).AgeRestarted();

        var record = Assert.Single(logger.Collector.GetSnapshot());
        Assert.Equal((7, LogLevel.Debug), (record.Id.Id, record.Level));
        Assert.Contains("'greeter'", record.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ConnectionFailed_LogsWarningWithException()
    {
        using var metrics = new ConnectionRefreshMetrics(null);
        var logger = new FakeLogger();
        var failure = new HttpIOException(HttpRequestError.ConnectionError, "ping timeout");

        new ConnectionRefreshTelemetry("greeter", metrics, logger).ConnectionFailed(failure);

        var record = Assert.Single(logger.Collector.GetSnapshot());
        Assert.Equal((3, LogLevel.Warning), (record.Id.Id, record.Level));
        Assert.Same(failure, record.Exception);
    }

    [Fact]
    public void Http11Required_LogsErrorNamingTheMisconfiguration()
    {
        using var metrics = new ConnectionRefreshMetrics(null);
        var logger = new FakeLogger();
        var failure = new HttpProtocolException(0xd, "HTTP_1_1_REQUIRED", null);

        new ConnectionRefreshTelemetry("greeter", metrics, logger).Http11Required(failure);

        var record = Assert.Single(logger.Collector.GetSnapshot());
        Assert.Equal((6, LogLevel.Error), (record.Id.Id, record.Level));
        Assert.Contains("'greeter'", record.Message, StringComparison.Ordinal);
        Assert.Contains("requires HTTP/1.1", record.Message, StringComparison.Ordinal);
        Assert.Same(failure, record.Exception);
    }

    [Fact]
    public void DrainCut_LogsWarningAndCounts()
    {
        using var metrics = new ConnectionRefreshMetrics(null);
        using var cut = new MetricCollector<long>(metrics.CallsCut);
        var logger = new FakeLogger();

        new ConnectionRefreshTelemetry("greeter", metrics, logger).DrainCut();

        Assert.Equal((4, LogLevel.Warning), (logger.Collector.LatestRecord.Id.Id, logger.Collector.LatestRecord.Level));
        Assert.Equal(1, Assert.Single(cut.GetMeasurementSnapshot()).Value);
    }
}
