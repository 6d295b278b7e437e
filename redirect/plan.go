package redirect

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Family is an IP family: IPv4 rules go to iptables, IPv6 rules to ip6tables.
type Family int

// The two families a plan covers.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "ip6"
	}
	return "ip4"
}

// ChainPrefix starts the name of every chain this package creates. Cleanup
// removes exactly the chains carrying it (and the rules jumping to them).
const ChainPrefix = "AV-"

// BypassMark is the SO_MARK the broker sets on its own upstream sockets
// (MarkControl). "AV" in the upper half-word, the lower half-word free; the
// local-mode backstop returns early for packets carrying it, so the broker's
// own traffic is never caught by rules meant for agents.
const BypassMark = 0x41560000

// Chain names one of our chains.
type Chain struct {
	Family Family
	Table  string // "nat" or "filter"
	Name   string // starts with ChainPrefix
}

// Rule is one iptables rule: appended to Chain in Table, in that Family.
type Rule struct {
	Family Family
	Table  string
	Chain  string
	Spec   []string
}

// Plan is the complete set of rules one mode intends, as data: the own
// chains with their contents, and the jump rules that hook them into the
// built-in chains (inserted at position 1, exactly once each).
type Plan struct {
	Chains []Chain
	Rules  []Rule // in order, each into one of Chains
	Jumps  []Rule // e.g. {nat PREROUTING -j AV-PREROUTING}
}

// GatewayConfig describes gateway mode (shape G).
type GatewayConfig struct {
	Ifaces          []string // interfaces the agents' traffic arrives on
	TransparentPort int      // where tcp/80,443 is redirected
	DNSPort         int      // where udp+tcp/53 is redirected
	AdminPort       int      // never reachable from Ifaces (documentary: every port but the two above is refused)
	IPv6            bool     // false: the agents' IPv6 traffic is dropped entirely (fail closed)
}

// Validate reports a configuration that cannot produce a safe plan.
func (c GatewayConfig) Validate() error {
	if len(c.Ifaces) == 0 {
		return fmt.Errorf("gateway mode needs at least one interface")
	}
	for _, i := range c.Ifaces {
		if i == "" || len(i) > 15 || strings.ContainsAny(i, " \t\n\"'!") {
			return fmt.Errorf("invalid gateway interface name %q", i)
		}
	}
	for _, p := range []int{c.TransparentPort, c.DNSPort} {
		if p <= 0 || p > 65535 {
			return fmt.Errorf("invalid port %d", p)
		}
	}
	if c.AdminPort < 0 || c.AdminPort > 65535 {
		return fmt.Errorf("invalid admin port %d", c.AdminPort)
	}
	return nil
}

// Own chain names.
const (
	chainPrerouting = "AV-PREROUTING"
	chainForward    = "AV-FORWARD"
	chainInput      = "AV-INPUT"
	chainOutput     = "AV-OUTPUT"
)

type planBuilder struct{ p Plan }

func (b *planBuilder) chain(f Family, table, name, builtin string) {
	b.p.Chains = append(b.p.Chains, Chain{Family: f, Table: table, Name: name})
	b.p.Jumps = append(b.p.Jumps, Rule{Family: f, Table: table, Chain: builtin, Spec: []string{"-j", name}})
}

func (b *planBuilder) rule(f Family, table, chain string, spec ...string) {
	b.p.Rules = append(b.p.Rules, Rule{Family: f, Table: table, Chain: chain, Spec: spec})
}

func icmpProto(f Family) string {
	if f == IPv6 {
		return "ipv6-icmp"
	}
	return "icmp"
}

func portUnreachable(f Family) string {
	if f == IPv6 {
		return "icmp6-port-unreachable"
	}
	return "icmp-port-unreachable"
}

// GatewayPlan computes the rules of gateway mode. Nothing is touched.
//
// Per family, for every interface IF in cfg.Ifaces:
//   - nat AV-PREROUTING: tcp/443 and tcp/80 REDIRECT to TransparentPort;
//     udp/53 and tcp/53 REDIRECT to DNSPort.
//   - filter AV-INPUT: the transparent and DNS ports, ICMP and replies are
//     accepted; every other tcp port is refused with a reset, everything else
//     with ICMP port-unreachable (so the admin port is unreachable).
//   - filter AV-FORWARD: udp/443 rejected with ICMP port-unreachable (QUIC
//     falls back to TCP at once), 853 dropped, then everything from IF dropped.
//
// With IPv6 false the IPv6 side has no redirect at all: AV-INPUT and
// AV-FORWARD drop everything the agents send over IPv6.
func GatewayPlan(cfg GatewayConfig) Plan {
	var b planBuilder
	tp := strconv.Itoa(cfg.TransparentPort)
	dp := strconv.Itoa(cfg.DNSPort)
	for _, f := range []Family{IPv4, IPv6} {
		if f == IPv6 && !cfg.IPv6 {
			b.chain(f, "filter", chainInput, "INPUT")
			b.chain(f, "filter", chainForward, "FORWARD")
			for _, i := range cfg.Ifaces {
				b.rule(f, "filter", chainInput, "-i", i, "-j", "DROP")
				b.rule(f, "filter", chainForward, "-i", i, "-j", "DROP")
			}
			continue
		}
		b.chain(f, "nat", chainPrerouting, "PREROUTING")
		b.chain(f, "filter", chainInput, "INPUT")
		b.chain(f, "filter", chainForward, "FORWARD")
		for _, i := range cfg.Ifaces {
			for _, port := range []string{"443", "80"} {
				b.rule(f, "nat", chainPrerouting, "-i", i, "-p", "tcp", "--dport", port, "-j", "REDIRECT", "--to-ports", tp)
			}
			for _, proto := range []string{"udp", "tcp"} {
				b.rule(f, "nat", chainPrerouting, "-i", i, "-p", proto, "--dport", "53", "-j", "REDIRECT", "--to-ports", dp)
			}

			b.rule(f, "filter", chainInput, "-i", i, "-p", "tcp", "--dport", tp, "-j", "ACCEPT")
			b.rule(f, "filter", chainInput, "-i", i, "-p", "udp", "--dport", dp, "-j", "ACCEPT")
			b.rule(f, "filter", chainInput, "-i", i, "-p", "tcp", "--dport", dp, "-j", "ACCEPT")
			b.rule(f, "filter", chainInput, "-i", i, "-p", icmpProto(f), "-j", "ACCEPT")
			b.rule(f, "filter", chainInput, "-i", i, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
			b.rule(f, "filter", chainInput, "-i", i, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset")
			b.rule(f, "filter", chainInput, "-i", i, "-j", "REJECT", "--reject-with", portUnreachable(f))

			b.rule(f, "filter", chainForward, "-i", i, "-p", "udp", "--dport", "443", "-j", "REJECT", "--reject-with", portUnreachable(f))
			b.rule(f, "filter", chainForward, "-i", i, "-p", "tcp", "--dport", "853", "-j", "DROP")
			b.rule(f, "filter", chainForward, "-i", i, "-p", "udp", "--dport", "853", "-j", "DROP")
			b.rule(f, "filter", chainForward, "-i", i, "-j", "DROP")
		}
	}
	return b.p
}

// BackstopConfig describes the iptables OUTPUT backstop of local mode: what
// the agents' cgroup may still send if the eBPF programs were detached.
type BackstopConfig struct {
	CgroupPath   string         // relative to the cgroup2 mount, e.g. "/agent-vault.agents"
	Transparent4 netip.AddrPort // tcp allowed here (v4); invalid: none
	Transparent6 netip.AddrPort // tcp allowed here (v6); invalid: none
	DNS4         netip.AddrPort // udp+tcp allowed here (v4); invalid: none
	DNS6         netip.AddrPort // udp+tcp allowed here (v6); invalid: none
}

// LocalBackstopPlan computes the filter AV-OUTPUT chain of local mode: the
// broker's own marked packets return first; the agents' cgroup may reach the
// transparent listener and the DNS proxy, and keep replying on connections
// already established; everything else it sends is dropped. With the eBPF
// programs attached these rules never drop anything (the programs already
// denied it); with them detached, the agents fail closed.
func LocalBackstopPlan(cfg BackstopConfig) Plan {
	var b planBuilder
	cg := []string{"-m", "cgroup", "--path", cfg.CgroupPath}
	for _, f := range []Family{IPv4, IPv6} {
		tr, dns := cfg.Transparent4, cfg.DNS4
		if f == IPv6 {
			tr, dns = cfg.Transparent6, cfg.DNS6
		}
		b.chain(f, "filter", chainOutput, "OUTPUT")
		b.rule(f, "filter", chainOutput, "-m", "mark", "--mark", fmt.Sprintf("0x%x", BypassMark), "-j", "RETURN")
		if tr.IsValid() {
			b.rule(f, "filter", chainOutput, join(cg, "-d", tr.Addr().String(), "-p", "tcp", "--dport", strconv.Itoa(int(tr.Port())), "-j", "RETURN")...)
		}
		if dns.IsValid() {
			for _, proto := range []string{"udp", "tcp"} {
				b.rule(f, "filter", chainOutput, join(cg, "-d", dns.Addr().String(), "-p", proto, "--dport", strconv.Itoa(int(dns.Port())), "-j", "RETURN")...)
			}
		}
		b.rule(f, "filter", chainOutput, join(cg, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN")...)
		b.rule(f, "filter", chainOutput, join(cg, "-j", "DROP")...)
	}
	return b.p
}

func join(a []string, b ...string) []string {
	out := make([]string, 0, len(a)+len(b))
	return append(append(out, a...), b...)
}

// String renders the plan in iptables-save style, one block per family and
// table: what an operator (or a golden file) reads.
func (p Plan) String() string {
	var sb strings.Builder
	for _, f := range []Family{IPv4, IPv6} {
		for _, table := range []string{"nat", "filter"} {
			var lines []string
			for _, c := range p.Chains {
				if c.Family == f && c.Table == table {
					lines = append(lines, ":"+c.Name)
				}
			}
			for _, c := range p.Chains {
				if c.Family == f && c.Table == table {
					for _, r := range p.rulesOf(c) {
						lines = append(lines, "-A "+r.Chain+" "+strings.Join(r.Spec, " "))
					}
				}
			}
			for _, r := range p.Jumps {
				if r.Family == f && r.Table == table {
					lines = append(lines, "-I "+r.Chain+" 1 "+strings.Join(r.Spec, " "))
				}
			}
			if len(lines) == 0 {
				continue
			}
			fmt.Fprintf(&sb, "# %s\n*%s\n%s\nCOMMIT\n", f, table, strings.Join(lines, "\n"))
		}
	}
	return sb.String()
}
