using System.Collections.Concurrent;
using System.Diagnostics.Tracing;

namespace ConnectionRefresh.Benchmarks.Micro;

/// <summary>Counts the runtime's AllocationTick events (one per ~100 KB allocated) by type: which types dominate.</summary>
internal sealed class AllocationSampler : EventListener
{
    private const EventKeywords GcKeyword = (EventKeywords)0x1;

    public ConcurrentDictionary<string, long> Bytes { get; } = new();

    public volatile bool Enabled;

    protected override void OnEventSourceCreated(EventSource eventSource)
    {
        if (eventSource.Name == "Microsoft-Windows-DotNETRuntime")
        {
            EnableEvents(eventSource, EventLevel.Verbose, GcKeyword);
        }
    }

    protected override void OnEventWritten(EventWrittenEventArgs eventData)
    {
        if (!Enabled || eventData.EventName != "GCAllocationTick_V4" || eventData.Payload is null)
        {
            return;
        }

        var index = eventData.PayloadNames!.IndexOf("TypeName");
        var amount = eventData.PayloadNames.IndexOf("AllocationAmount64");
        if (index >= 0 && amount >= 0)
        {
            Bytes.AddOrUpdate((string)eventData.Payload[index]!, (long)(ulong)eventData.Payload[amount]!, (_, v) => v + (long)(ulong)eventData.Payload[amount]!);
        }
    }
}
