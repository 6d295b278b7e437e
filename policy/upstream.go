package policy

import "net/netip"

// UpstreamAddrAllowed is the one judgement of which addresses an upstream
// may have: the DNS proxy hands agents only such answers, and the broker
// dials only such addresses, so the two never disagree (before, the DNS
// proxy handed out documentation, Teredo and 6to4 addresses the broker
// then refused, and the broker refused every NAT64 address, which broke
// IPv6-only networks behind DNS64).
//
//   - Never: unspecified, link-local (cloud metadata lives there), the
//     metadata and platform addresses clouds keep elsewhere (fd00:ec2::254,
//     fd20:ce::254, 100.100.100.200, 168.63.129.16), multicast, broadcast,
//     reserved, documentation, discard-only, Teredo, 6to4 (deprecated, RFC
//     7526), the deprecated IPv4-compatible (::a.b.c.d) and IPv4-translated
//     (::ffff:0:a.b.c.d) forms, and local-use NAT64 (its embedding cannot be
//     read without the network's prefix length).
//   - Only with allowPrivate: loopback, "this network" (0/8 reaches the
//     host itself on Linux), RFC 1918, CGNAT, IETF protocol assignments,
//     benchmarking, unique-local and the deprecated site-local.
//   - The well-known NAT64 prefix (64:ff9b::/96) is judged by the IPv4
//     address it embeds, which is where the packets go.
//   - A v4-mapped address is judged as the IPv4 address.
func UpstreamAddrAllowed(a netip.Addr, allowPrivate bool) bool {
	a = a.Unmap()
	if !a.IsValid() || a.IsUnspecified() {
		return false
	}
	if wellKnownNAT64.Contains(a) {
		b := a.As16()
		return UpstreamAddrAllowed(netip.AddrFrom4([4]byte(b[12:16])), allowPrivate)
	}
	if a.IsLinkLocalUnicast() || a.IsMulticast() {
		return false // 169.254.0.0/16 (cloud metadata) and fe80::/10; 224.0.0.0/4 and ff00::/8
	}
	if ipv4Compatible.Contains(a) && !a.IsLoopback() {
		return false // ::a.b.c.d; ::1 is loopback, judged below
	}
	for _, p := range neverUpstream {
		if p.Contains(a) {
			return false
		}
	}
	if allowPrivate {
		return true
	}
	if a.IsLoopback() || a.IsPrivate() {
		return false
	}
	for _, p := range privateUpstream {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

var (
	wellKnownNAT64 = netip.MustParsePrefix("64:ff9b::/96")
	ipv4Compatible = netip.MustParsePrefix("::/96")
)

var neverUpstream = mustPrefixes(
	"192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", // documentation
	"240.0.0.0/4",        // reserved, and broadcast
	"100::/64",           // discard-only
	"2001::/32",          // Teredo
	"2001:db8::/32",      // documentation
	"2002::/16",          // 6to4
	"64:ff9b:1::/48",     // local-use NAT64
	"::ffff:0:0:0/96",    // IPv4-translated (SIIT)
	"fd00:ec2::254/128",  // AWS metadata over IPv6 (inside fc00::/7)
	"fd20:ce::254/128",   // Google Cloud metadata over IPv6
	"100.100.100.200/32", // Alibaba Cloud metadata (inside CGNAT space)
	"168.63.129.16/32",   // Azure platform endpoint (WireServer)
)

var privateUpstream = mustPrefixes(
	"0.0.0.0/8",     // "this network": connect(2) to it reaches the host
	"100.64.0.0/10", // shared address space (CGNAT)
	"192.0.0.0/24",  // IETF protocol assignments
	"198.18.0.0/15", // benchmarking
	"fec0::/10",     // deprecated site-local
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}
