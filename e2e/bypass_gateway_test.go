package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/testutil/appliance"
)

// bypass is one attempt of an agent to reach something it may not, with
// its three witnesses: what the client got, what the fake internet saw
// (the canary must stay at 0 connections, bytes and datagrams; neither API
// upstream nor the upstream DNS server may see anything the scenario does
// not allow), and either an audit row (L7: the broker or the DNS proxy
// decided) or, for what the kernel drops before any listener sees it, the
// packet counter of the AV-* rule that dropped it.
type bypass struct {
	name string
	dst  netip.Addr // decides the family
	run  func() (out string, code int)
	// client outcome: one of these exit codes, and want in the output
	codes []int
	want  string
	// witness: an audit row, or a kernel rule whose counter must grow
	audit  func(appliance.AuditRow) bool
	auditS string
	rule   string // "ip4|-A AV-FORWARD ..." minus the family prefix
	// eperm: the kernel refused the socket operation itself (local mode:
	// the cgroup programs deny it before any packet exists, so neither an
	// audit row nor a rule counter can witness it; the client's EPERM does)
	eperm bool
	// upstreamOK: requests the API upstreams may receive (DoH through an
	// allowed service reaches it, by design, and is audited)
	upstreamOK int
}

func connRow(reason, host string) func(appliance.AuditRow) bool {
	return func(r appliance.AuditRow) bool {
		return r.Action == "connection" && r.Decision == "deny" && r.Reason == reason && r.Host == host &&
			r.Actor == "agent:"+appliance.Agent
	}
}

func requestRow(decision, reason, host, path string) func(appliance.AuditRow) bool {
	return func(r appliance.AuditRow) bool {
		return r.Action == "request" && r.Decision == decision && r.Reason == reason && r.Host == host && r.Path == path &&
			r.Actor == "agent:"+appliance.Agent
	}
}

func cmd(r *rig, name string, args ...string) func() (string, int) {
	return func() (string, int) { return r.run(10*time.Second, name, args...) }
}

// bypassScenarios lists every bypass of the point 4, for one family.
func bypassScenarios(g *appliance.Gateway, r *rig, v6 bool) []bypass {
	canary, api, gw := appliance.CanaryV4, g.Topo.NetV4, g.Topo.GWAgentV4
	reject, f := "icmp-port-unreachable", "-4"
	if v6 {
		canary, api, gw = appliance.CanaryV6, g.Topo.NetV6, g.Topo.GWAgentV6
		reject, f = "icmp6-port-unreachable", "-6"
	}
	iface := g.Topo.GWAgentIface
	ca := g.BrokerCAFile
	curl := func(args ...string) func() (string, int) {
		return cmd(r, "curl", append([]string{"-sS", f, "--max-time", "3", "--cacert", ca}, args...)...)
	}
	resolve := func(name string, port int, a netip.Addr) string {
		return fmt.Sprintf("%s:%d:%s", name, port, urlHost(a))
	}
	drop := "-A AV-FORWARD -i " + iface + " -j DROP"
	return []bypass{
		{name: "direct-IP https to the canary (no SNI)", dst: canary,
			run: curl("https://" + urlHost(canary) + "/"), codes: []int{35},
			audit: connRow("no_sni", ""), auditS: "connection deny no_sni"},
		{name: "direct-IP http to the canary", dst: canary,
			run: curl("http://" + urlHost(canary) + "/x"), codes: []int{0}, want: `"no_service"`,
			audit: requestRow("deny", "no_service_for_host", urlHost(canary), "/x"), auditS: "request deny no_service_for_host"},
		{name: "allowed SNI to an address never pinned for it", dst: canary,
			run:   curl("--resolve", resolve(appliance.APIHost, 443, canary), "https://"+appliance.APIHost+"/"),
			codes: []int{35}, audit: connRow("destination_not_resolved", appliance.APIHost), auditS: "connection deny destination_not_resolved"},
		{name: "allowed Host over plain http to the canary", dst: canary,
			run:   curl("--resolve", resolve(appliance.APIHost, 80, canary), "http://"+appliance.APIHost+"/plain"),
			codes: []int{0}, want: `"https_required"`,
			audit: requestRow("deny", "https_required", appliance.APIHost, "/plain"), auditS: "request deny https_required"},
		{name: "name without a service at its real address", dst: canary,
			run:   curl("--resolve", resolve(appliance.CanaryHost, 443, canary), "https://"+appliance.CanaryHost+"/c"),
			codes: []int{0}, want: `"no_service"`,
			audit: requestRow("deny", "no_service_for_host", appliance.CanaryHost, "/c"), auditS: "request deny no_service_for_host"},
		{name: "ClientHello without SNI to the API's own address", dst: api,
			run: func() (string, int) {
				return r.run(10*time.Second, "sh", "-c", "openssl s_client -noservername -connect "+
					netip.AddrPortFrom(api, 443).String()+" </dev/null 2>&1")
			},
			codes: []int{1}, want: "alert", audit: connRow("no_sni", ""), auditS: "connection deny no_sni"},
		// ECH, decided: the broker completes (or refuses) the handshake as
		// the outer ClientHello's public name, like any SNI; it never holds
		// ECH keys, so real ECH is rejected and the client retries without
		// it, while GREASE ECH (sent by browsers on every connection) keeps
		// working. Denying every hello with the extension would break those
		// browsers. The inner name is never decrypted nor forwarded, and the
		// public name goes through destination binding: here it is refused.
		{name: "ECH with the allowed name as public name, to the canary", dst: canary,
			run: func() (string, int) {
				return echClient(r, canary, appliance.APIHost, appliance.OtherHost)
			},
			codes: []int{35}, audit: connRow("destination_not_resolved", appliance.APIHost), auditS: "connection deny destination_not_resolved"},
		{name: "DoH to an address (no SNI)", dst: canary,
			run:   curl("--doh-url", "https://"+urlHost(canary)+"/dns-query", "https://"+appliance.OtherHost+"/"),
			codes: []int{6, 27}, audit: connRow("no_sni", ""), auditS: "connection deny no_sni"},
		{name: "DoH through the allowed service reaches only that service", dst: api,
			run:   curl("--doh-url", "https://"+appliance.APIHost+"/dns-query", "https://"+appliance.OtherHost+"/"),
			codes: []int{6, 27}, upstreamOK: 2, // the A and AAAA questions, as POSTs to the echo API
			audit: requestRow("allow", "matched", appliance.APIHost, "/dns-query"), auditS: "request allow /dns-query (audited)"},
		{name: "DNS to the canary as resolver (udp/53)", dst: canary,
			run:   cmd(r, "dig", "+time=2", "+tries=1", "@"+canary.String(), appliance.CanaryHost, "A"),
			codes: []int{0}, want: "status: NXDOMAIN",
			audit: dnsRow(appliance.CanaryHost, "A", "deny", "no_service_for_host"), auditS: "dns.query deny"},
		{name: "DNS over TCP to the canary as resolver (tcp/53)", dst: canary,
			run:   cmd(r, "dig", "+time=2", "+tries=1", "+tcp", "@"+canary.String(), appliance.CanaryHost, "AAAA"),
			codes: []int{0}, want: "status: NXDOMAIN",
			audit: dnsRow(appliance.CanaryHost, "AAAA", "deny", "no_service_for_host"), auditS: "dns.query deny"},
		{name: "denied name asked of the real upstream server directly", dst: api,
			run:   cmd(r, "dig", "+time=2", "+tries=1", "@"+api.String(), appliance.OtherHost, "A"),
			codes: []int{0}, want: "status: NXDOMAIN",
			audit: dnsRow(appliance.OtherHost, "A", "deny", "no_service_for_host"), auditS: "dns.query deny"},
		{name: "resolver on the agents' own subnet (the gateway's address)", dst: gw,
			run:   cmd(r, "dig", "+time=2", "+tries=1", "@"+gw.String(), "exfil-"+fmt.Sprint(v6)+".example.test", "TXT"),
			codes: []int{0}, want: "status: NXDOMAIN",
			audit: dnsRow("exfil-"+fmt.Sprint(v6)+".example.test", "TXT", "deny", "no_service_for_host"), auditS: "dns.query deny"},
		{name: "the broker's transparent port dialled directly", dst: gw,
			run:   func() (string, int) { return probe(r, "tcp", gw, 14323) },
			codes: []int{0}, auditS: "connection deny destination_is_broker",
			// refused before the agent is looked up: the row names the
			// agent's address as target, the actor is agent:unknown
			audit: func(r appliance.AuditRow) bool {
				return r.Action == "connection" && r.Decision == "deny" && r.Reason == "destination_is_broker" &&
					r.Target == map[bool]string{true: g.Topo.AgentV4.String(), false: g.Topo.AgentV6.String()}[gw.Is4()]
			}},
		{name: "the admin port on the gateway", dst: gw,
			run:   func() (string, int) { return probe(r, "tcp", gw, 14321) },
			codes: []int{3}, want: "refused", rule: "-A AV-INPUT -i " + iface + " -p tcp -j REJECT --reject-with tcp-reset"},
		{name: "tcp/22 to the canary", dst: canary,
			run:   func() (string, int) { return probe(r, "tcp", canary, 22) },
			codes: []int{4}, want: "timeout", rule: drop},
		{name: "tcp/8080 to the canary", dst: canary,
			run:   func() (string, int) { return probe(r, "tcp", canary, 8080) },
			codes: []int{4}, want: "timeout", rule: drop},
		{name: "DoT (tcp/853) to the canary", dst: canary,
			run:   func() (string, int) { return probe(r, "tcp", canary, 853) },
			codes: []int{4}, want: "timeout", rule: "-A AV-FORWARD -i " + iface + " -p tcp -m tcp --dport 853 -j DROP"},
		{name: "DoQ (udp/853) to the canary", dst: canary,
			run:   func() (string, int) { return probe(r, "udp", canary, 853) },
			codes: []int{4}, want: "timeout", rule: "-A AV-FORWARD -i " + iface + " -p udp -m udp --dport 853 -j DROP"},
		{name: "QUIC (udp/443) to the canary, refused at once", dst: canary,
			run:   func() (string, int) { return probe(r, "udp", canary, 443) },
			codes: []int{3}, want: "refused",
			rule: "-A AV-FORWARD -i " + iface + " -p udp -m udp --dport 443 -j REJECT --reject-with " + reject},
		{name: "QUIC (udp/443) to the API's own address", dst: api,
			run:   func() (string, int) { return probe(r, "udp", api, 443) },
			codes: []int{3}, want: "refused",
			rule: "-A AV-FORWARD -i " + iface + " -p udp -m udp --dport 443 -j REJECT --reject-with " + reject},
		{name: "other UDP (udp/9999) to the canary", dst: canary,
			run:   func() (string, int) { return probe(r, "udp", canary, 9999) },
			codes: []int{4}, want: "timeout", rule: drop},
		{name: "ICMP echo to the canary", dst: canary,
			run:   func() (string, int) { return probe(r, "icmp", canary, 0) },
			codes: []int{4}, want: "timeout", rule: drop},
	}
}

// TestBypassGateway tries every bypass of the point 4 over IPv4 and
// IPv6 against one gateway and counts the blocked ones.
func TestBypassGateway(t *testing.T) {
	g := appliance.StartGateway(t)
	r := gatewayRig(g)
	var all []bypass
	all = append(all, bypassScenarios(g, r, false)...)
	all = append(all, bypassScenarios(g, r, true)...)
	blocked := 0
	for _, s := range all {
		if t.Run(fam(s.dst)+"/"+s.name, func(t *testing.T) { runBypass(t, r, s, g.RuleCounters) }) {
			blocked++
		}
	}
	c, b, d := g.Canary.Total()
	if c+b+d != 0 {
		t.Errorf("canary at the end: %d conns, %d bytes, %d datagrams", c, b, d)
	}
	t.Logf("bypass scenarios: %d blocked of %d", blocked, len(all))
}

// runBypass tries one scenario and checks its three witnesses. counters
// reads the AV-* rule counters (nil where there is no gateway).
func runBypass(t *testing.T, r *rig, s bypass, counters func(testing.TB) map[string]uint64) {
	before := seen(r)
	seq := lastSeq(t, r)
	var rules map[string]uint64
	if counters != nil {
		rules = counters(t)
	}
	out, code := s.run()
	after := seen(r)

	codeOK := false
	for _, c := range s.codes {
		codeOK = codeOK || c == code
	}
	if !codeOK || !strings.Contains(out, s.want) {
		t.Errorf("client: exit %d (want one of %v) and output without %q:\n%s", code, s.codes, s.want, out)
	}
	if after.conns != before.conns || after.bytes != before.bytes || after.datagrams != before.datagrams {
		t.Errorf("the canary saw something: %+v -> %+v", before, after)
	}
	for _, got := range r.received()[before.received:] {
		if s.upstreamOK == 0 || got.Path != "/dns-query" {
			t.Errorf("the API upstreams received %s %s%s", got.Method, got.Host, got.Path)
		}
	}
	if got := after.received - before.received; got > s.upstreamOK {
		t.Errorf("the API upstreams received %d requests, want at most %d", got, s.upstreamOK)
	}
	for _, q := range r.dns.Queries()[before.queries:] {
		if q != appliance.APIHost+". A" && q != appliance.APIHost+". AAAA" {
			t.Errorf("the upstream DNS server received %q", q)
		}
	}
	switch {
	case s.audit != nil:
		row := waitAudit(t, r, seq, s.auditS, s.audit)
		t.Logf("blocked; audit row %s", row)
	case s.rule != "" && counters != nil:
		key := map[bool]string{true: "ip4|", false: "ip6|"}[s.dst.Is4()] + s.rule
		now := counters(t)
		if _, ok := now[key]; !ok {
			t.Fatalf("no rule %q in the gateway; rules: %v", key, now)
		}
		if now[key] <= rules[key] {
			t.Errorf("kernel witness: counter of %q did not grow (%d)", key, now[key])
		}
		t.Logf("blocked; kernel witness %q: +%d packets", key, now[key]-rules[key])
	case s.eperm:
		if !strings.Contains(out, "eperm") && !strings.Contains(out, "ermission denied") && !strings.Contains(out, "not permitted") {
			t.Errorf("kernel witness: no EPERM in %q", out)
		}
		t.Logf("blocked; kernel witness: the socket operation failed with EPERM")
	default:
		t.Fatal("scenario without a witness")
	}
}
