package policy

import (
	"net/netip"
	"testing"
)

func TestUpstreamAddrAllowed(t *testing.T) {
	const (
		never   = iota // refused even with allowPrivate
		private        // allowed only with allowPrivate
		public         // always allowed
	)
	for _, c := range []struct {
		addr string
		want int
	}{
		{"8.8.8.8", public}, {"93.184.216.34", public}, {"2606:4700::1111", public}, {"::ffff:8.8.8.8", public},
		{"64:ff9b::808:808", public}, // NAT64 of a public address

		{"127.0.0.1", private}, {"127.8.9.10", private}, {"::1", private}, {"::ffff:127.0.0.1", private},
		{"10.0.0.1", private}, {"172.16.5.4", private}, {"192.168.0.1", private}, {"::ffff:10.0.0.1", private},
		{"100.64.0.1", private}, {"100.100.100.201", private}, {"0.1.2.3", private}, {"192.0.0.8", private},
		{"198.18.0.1", private}, {"fc00::1", private}, {"fd77:1::2", private}, {"fec0::1", private},
		{"64:ff9b::a00:1", private}, // NAT64 of 10.0.0.1

		{"0.0.0.0", never}, {"::", never}, {"169.254.169.254", never}, {"fd00:ec2::254", never},
		{"64:ff9b::a9fe:a9fe", never}, // NAT64 of the metadata address
		{"fe80::1", never}, {"224.0.0.1", never}, {"ff02::1", never}, {"255.255.255.255", never}, {"240.0.0.1", never},
		{"192.0.2.1", never}, {"198.51.100.7", never}, {"203.0.113.10", never}, {"2001:db8::1", never},
		{"100::1", never}, {"2001:0:4136:e378::1", never}, {"2002:808:808::1", never}, {"64:ff9b:1::808:808", never},
		{"::a9fe:a9fe", never}, {"::7f00:1", never}, {"::808:808", never}, {"::ffff:0:a9fe:a9fe", never}, // v4-compatible, SIIT
		{"fd20:ce::254", never}, {"100.100.100.200", never}, {"168.63.129.16", never}, // metadata and platform endpoints
		{"", never},
	} {
		var a netip.Addr
		if c.addr != "" {
			a = netip.MustParseAddr(c.addr)
		}
		if got := UpstreamAddrAllowed(a, false); got != (c.want == public) {
			t.Errorf("UpstreamAddrAllowed(%s, false) = %v", c.addr, got)
		}
		if got := UpstreamAddrAllowed(a, true); got != (c.want != never) {
			t.Errorf("UpstreamAddrAllowed(%s, true) = %v", c.addr, got)
		}
	}
}
