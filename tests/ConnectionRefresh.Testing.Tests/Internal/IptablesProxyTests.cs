using System.Net;
using ConnectionRefresh.Testing.Internal;

namespace ConnectionRefresh.Testing.Tests.Internal;

public sealed class IptablesProxyTests
{
    [Fact]
    public void BuildServiceRules_ThreeEndpointsOneStale_KubeProxyChainPattern()
    {
        IPEndPoint[] endpoints = [new(IPAddress.Loopback, 1001), new(IPAddress.Loopback, 1002), new(IPAddress.Loopback, 1003)];

        var rules = IptablesProxy.BuildServiceRules(endpoints, [999]);

        Assert.Equal(
            """
            *nat
            :KUBE-SVC-CRSIM - [0:0]
            :KUBE-SEP-1001 - [0:0]
            :KUBE-SEP-1002 - [0:0]
            :KUBE-SEP-1003 - [0:0]
            :KUBE-SEP-999 - [0:0]
            -A KUBE-SVC-CRSIM -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-1001
            -A KUBE-SVC-CRSIM -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-1002
            -A KUBE-SVC-CRSIM -j KUBE-SEP-1003
            -A KUBE-SEP-1001 -p tcp -m tcp -j DNAT --to-destination 127.0.0.1:1001
            -A KUBE-SEP-1002 -p tcp -m tcp -j DNAT --to-destination 127.0.0.1:1002
            -A KUBE-SEP-1003 -p tcp -m tcp -j DNAT --to-destination 127.0.0.1:1003
            -X KUBE-SEP-999
            COMMIT

            """,
            rules);
    }

    [Fact]
    public void BuildBaseRules_Service_JumpsFromOutputAndKeepsOneDnatRule()
    {
        var rules = IptablesProxy.BuildBaseRules(new IPEndPoint(IPAddress.Parse("127.10.0.1"), 80));

        Assert.Contains("-A OUTPUT -j KUBE-SERVICES\n", rules, StringComparison.Ordinal);
        Assert.Contains("-A KUBE-SERVICES -d 127.10.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-CRSIM\n", rules, StringComparison.Ordinal);
        Assert.Contains("-A KUBE-SEP-NONE -p tcp -m tcp -j DNAT", rules, StringComparison.Ordinal);
    }
}
