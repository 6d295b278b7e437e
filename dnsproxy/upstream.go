package dnsproxy

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

const (
	// ednsSize is the UDP payload size the proxy advertises, upstream and to
	// agents (the DNS flag day 2020 value: no fragmentation).
	ednsSize = 1232
	// maxCNAMEHops bounds how far a CNAME chain in an answer is followed.
	maxCNAMEHops = 16
	// maxAddrs bounds how many addresses of one answer are kept and pinned.
	maxAddrs = 32
)

// exchangeFunc sends one query upstream. The default is (*Proxy).forward;
// tests replace it to observe what would leave the appliance.
type exchangeFunc func(ctx context.Context, name string, qtype uint16, tcp bool) (*dns.Msg, error)

// forward asks the upstream resolver for name, over TCP when the agent asked
// over TCP, else over UDP with a retry over TCP when the answer is truncated.
// Nothing of the agent's message but the name and type is sent: no EDNS
// options (client subnet, cookies), no id.
func (p *Proxy) forward(ctx context.Context, name string, qtype uint16, tcp bool) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(ednsSize, false)
	c := dns.Client{Net: "udp", Timeout: p.cfg.UpstreamTimeout, UDPSize: ednsSize, Dialer: p.cfg.Dialer}
	if tcp {
		c.Net = "tcp"
	}
	r, _, err := c.ExchangeContext(ctx, m, p.upstream)
	if err == nil && r.Truncated && !tcp {
		c.Net = "tcp"
		r, _, err = c.ExchangeContext(ctx, m, p.upstream)
	}
	if err != nil {
		return nil, fmt.Errorf("query upstream %s over %s: %w", p.upstream, c.Net, err)
	}
	if len(r.Question) != 1 || !strings.EqualFold(r.Question[0].Name, m.Question[0].Name) || r.Question[0].Qtype != qtype {
		return nil, fmt.Errorf("query upstream %s: answer is for another question", p.upstream)
	}
	return r, nil
}

// answerAddrs collects the addresses of type qtype the answer gives for name,
// following CNAMEs within the answer. ttl is the smallest TTL along the way.
func answerAddrs(r *dns.Msg, name string, qtype uint16) (addrs []netip.Addr, ttls []uint32) {
	target := dns.Fqdn(name)
	chainTTL := ^uint32(0)
	for range maxCNAMEHops {
		next := ""
		for _, rr := range r.Answer {
			h := rr.Header()
			if h.Class != dns.ClassINET || !strings.EqualFold(h.Name, target) {
				continue
			}
			var a netip.Addr
			switch v := rr.(type) {
			case *dns.A:
				if qtype != dns.TypeA {
					continue
				}
				a, _ = netip.AddrFromSlice(v.A.To4())
			case *dns.AAAA:
				if qtype != dns.TypeAAAA {
					continue
				}
				a, _ = netip.AddrFromSlice(v.AAAA.To16())
			case *dns.CNAME:
				if next == "" {
					next = v.Target
					chainTTL = min(chainTTL, h.Ttl)
				}
				continue
			default:
				continue
			}
			if !a.IsValid() || len(addrs) >= maxAddrs {
				continue
			}
			ttl := min(chainTTL, h.Ttl)
			if i := indexAddr(addrs, a); i >= 0 {
				ttls[i] = min(ttls[i], ttl)
				continue
			}
			addrs = append(addrs, a)
			ttls = append(ttls, ttl)
		}
		if len(addrs) > 0 || next == "" {
			return addrs, ttls
		}
		target = next
	}
	return addrs, ttls
}

func indexAddr(list []netip.Addr, a netip.Addr) int {
	for i, b := range list {
		if a == b {
			return i
		}
	}
	return -1
}

var nat64 = netip.MustParsePrefix("64:ff9b::/96")

var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),  // shared address space (CGNAT)
	netip.MustParsePrefix("192.0.0.0/24"),   // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved, and broadcast
	netip.MustParsePrefix("fec0::/10"),      // deprecated site-local
	netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64
	netip.MustParsePrefix("100::/64"),       // discard-only
	netip.MustParsePrefix("::ffff:0:0/96"),  // mapped (unmapped before the check)
	netip.MustParsePrefix("::/128"),         // unspecified
	netip.MustParsePrefix("::1/128"),        // loopback
	netip.MustParsePrefix("169.254.0.0/16"), // link-local, cloud metadata
	netip.MustParsePrefix("127.0.0.0/8"),    // loopback
	netip.MustParsePrefix("255.255.255.255/32"),
}

// isPublic reports whether an answer address may be handed to an agent for a
// public name without AllowPrivate: not private, loopback, link-local,
// multicast, unspecified or otherwise special. NAT64 (64:ff9b::/96) and 6to4
// (2002::/16) addresses are judged by the IPv4 address they embed.
func isPublic(a netip.Addr) bool {
	a = a.Unmap()
	if a.Is6() {
		b := a.As16()
		switch {
		case nat64.Contains(a):
			return isPublic(netip.AddrFrom4([4]byte(b[12:16])))
		case b[0] == 0x20 && b[1] == 0x02:
			return isPublic(netip.AddrFrom4([4]byte(b[2:6])))
		}
	}
	if a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() ||
		a.IsUnspecified() || a.IsInterfaceLocalMulticast() || a.IsLinkLocalMulticast() {
		return false
	}
	for _, p := range nonPublic {
		if p.Contains(a) {
			return false
		}
	}
	return true
}
