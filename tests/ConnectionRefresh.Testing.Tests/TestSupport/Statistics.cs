namespace ConnectionRefresh.Testing.Tests.TestSupport;

internal static class Statistics
{
    /// <summary>Pearson's chi-square statistic of observed counts against a uniform expectation.</summary>
    public static double ChiSquareUniform(IReadOnlyList<long> observed)
    {
        var expected = observed.Sum() / (double)observed.Count;
        return observed.Sum(o => (o - expected) * (o - expected) / expected);
    }

    /// <summary>
    /// Critical values of the chi-square distribution with df = k − 1 degrees of freedom at an upper-tail probability of
    /// 1e-5 (from standard tables: df=3 → 25.90, df=4 → 28.47, df=5 → 30.86). A test that passes when the statistic is
    /// below this value fails falsely (the balancer really is uniform) with probability 1e-5, under the 1e-4 budget.
    /// </summary>
    public static double CriticalValue1e5(int degreesOfFreedom) => degreesOfFreedom switch
    {
        3 => 25.90,
        4 => 28.47,
        5 => 30.86,
        _ => throw new ArgumentOutOfRangeException(nameof(degreesOfFreedom)),
    };
}
