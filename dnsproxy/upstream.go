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
