using System.Collections;
using System.Collections.Concurrent;
using Grpc.Core;
using Grpc.Net.Client.Balancer;

namespace ConnectionRefresh.Kubernetes.Tests.Fakes;

/// <summary>
/// What a resolver published to its listener, in order (<see cref="Add"/> is the listener), for both resolver harnesses:
/// one definition of "the last result" and "the last addresses". Safe to read while the resolver publishes.
/// </summary>
internal sealed class PublishedResults : IReadOnlyCollection<ResolverResult>
{
    private readonly ConcurrentQueue<ResolverResult> _results = new();

    public int Count => _results.Count;

    public ResolverResult? Last => _results.LastOrDefault();

    /// <summary>The addresses of the last OK result, as "ip:port", or null before the first one.</summary>
    public HashSet<string>? LastAddresses =>
        _results.LastOrDefault(r => r.Status.StatusCode == StatusCode.OK)?.Addresses!.Select(a => a.ToString()).ToHashSet();

    public void Add(ResolverResult result) => _results.Enqueue(result);

    public IEnumerator<ResolverResult> GetEnumerator() => _results.GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}
