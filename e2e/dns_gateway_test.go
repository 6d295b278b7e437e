package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/testutil/appliance"
)

// The DNS half of the issue in gateway mode, with real clients (dig, libc
// getent, curl) in the agent namespace whose resolv.conf names an address
// that exists nowhere: every resolver address is answered by the appliance
// over UDP and TCP, denied names never reach the upstream server, HTTPS/SVCB
// is empty, curl by name is brokered end to end over v4 and v6, and a flood
// is rate-limited. One gateway for every subtest.
func TestDNSGateway(t *testing.T) {
	g := appliance.StartGateway(t)
	r := gatewayRig(g)
	topo := g.Topo
	api4, api6 := topo.NetV4, topo.NetV6
	nowhere4, nowhere6 := netip.MustParseAddr(appliance.Resolver), netip.MustParseAddr("fd77:3::53")
	resolvers := []resolver{
		{"an address that exists nowhere", nowhere4},
		{"an address that exists nowhere", nowhere6},
		{"the real upstream server", topo.NetV4},
		{"the real upstream server's v6 address", topo.NetV6},
		{"the canary", appliance.CanaryV4},
		{"the canary", appliance.CanaryV6},
		{"the gateway on the agents' own subnet", topo.GWAgentV4},
		{"the gateway on the agents' own subnet", topo.GWAgentV6},
	}

	t.Run("any resolver address is answered by the appliance", func(t *testing.T) {
		checkAnyResolverAnswered(t, r, resolvers, api4, api6)
	})

	t.Run("libc getent resolves through resolv.conf, UDP and TCP, v4 and v6 resolvers", func(t *testing.T) {
		checkGetent(t, r, nowhere4, nowhere6, api4, api6)
	})

	deniedNames := []struct{ name, qtype string }{
		{appliance.OtherHost, "A"}, // resolves upstream, but no service
		{appliance.CanaryHost, "AAAA"},
		{"c2VjcmV0LWRhdGE.exfil.example.test", "TXT"}, // tunnelling-shaped
		{appliance.APIHost + ".evil.test", "A"},       // suffix trick
		{"xn--pple-43d.test", "A"},                    // IDN look-alike
	}
	t.Run("denied names get NXDOMAIN with a SOA and are audited", func(t *testing.T) {
		for i, d := range deniedNames {
			rv := resolvers[i%len(resolvers)]
			for _, tcp := range []bool{false, true} {
				seq := lastSeq(t, r)
				res := dig(r, rv.addr.String(), tcp, d.qtype, d.name)
				if res.Status != "NXDOMAIN" || !res.SOA || len(res.Answers) != 0 {
					t.Errorf("dig @%s tcp=%v %s %s: status %q soa %v answers %v\n%s", rv.addr, tcp, d.qtype, d.name, res.Status, res.SOA, res.Answers, res.Out)
				}
				waitAudit(t, r, seq, "dns.query deny "+d.name, dnsRow(strings.ToLower(d.name), d.qtype, "deny", "no_service_for_host"))
			}
		}
	})

	t.Run("HTTPS and SVCB of an allowed name are NOERROR without data", func(t *testing.T) {
		for _, qtype := range []string{"HTTPS", "SVCB", "TYPE65", "TYPE64"} {
			for _, tcp := range []bool{false, true} {
				seq := lastSeq(t, r)
				res := dig(r, "", tcp, qtype, appliance.APIHost)
				if res.Status != "NOERROR" || len(res.Answers) != 0 || !res.SOA {
					t.Errorf("dig tcp=%v %s %s: status %q answers %v soa %v\n%s", tcp, qtype, appliance.APIHost, res.Status, res.Answers, res.SOA, res.Out)
				}
				want := map[string]string{"TYPE65": "HTTPS", "TYPE64": "SVCB"}[qtype]
				if want == "" {
					want = qtype
				}
				waitAudit(t, r, seq, "dns.query "+want, dnsRow(appliance.APIHost, want, "deny", "https_svcb_blocked"))
			}
		}
	})

	t.Run("curl by name, no --resolve, is brokered over v4 and v6", func(t *testing.T) {
		for _, fam := range []struct {
			flag string
			dst  netip.Addr // where the agent connected: the pinned address of its family
		}{{"-4", api4}, {"-6", api6}} {
			before := len(g.Received())
			seq := lastSeq(t, r)
			out, errOut, code := g.Curl(fam.flag, "--max-time", "3", "-w", "\nremote_ip=%{remote_ip}", "-H", "Authorization: Bearer placeholder",
				"https://"+appliance.APIHost+"/v1/models?fam="+fam.flag)
			if code != 0 {
				t.Fatalf("curl %s: exit %d: %s", fam.flag, code, errOut)
			}
			got := g.Received()[before:]
			// the broker dialled from the gateway (no NAT: the agent's own
			// address would show a leak); its pool may reuse a connection of
			// either family for the name
			if len(got) != 1 || got[0].Header.Get("Authorization") != "Bearer "+appliance.Secret ||
				!strings.HasPrefix(got[0].Remote, topo.GWNetV4.String()+":") && !strings.HasPrefix(got[0].Remote, urlHost(topo.GWNetV6)+":") {
				t.Fatalf("curl %s: upstream received %+v", fam.flag, got)
			}
			if !strings.HasSuffix(out, "remote_ip="+fam.dst.String()) {
				t.Fatalf("curl %s connected elsewhere than %s: %q", fam.flag, fam.dst, out)
			}
			if strings.Contains(out, appliance.Secret) {
				t.Fatalf("curl %s: the agent's response holds the secret", fam.flag)
			}
			qtype := map[string]string{"-4": "A", "-6": "AAAA"}[fam.flag]
			waitAudit(t, r, seq, "dns.query allow "+qtype, dnsRow(appliance.APIHost, qtype, "allow", "allowed"))
			waitAudit(t, r, seq, "request allow", func(row appliance.AuditRow) bool {
				return row.Action == "request" && row.Decision == "allow" && row.Host == appliance.APIHost && row.Path == "/v1/models"
			})
		}
	})

	t.Run("a flood of queries is rate-limited and audited once per window", func(t *testing.T) {
		seq := lastSeq(t, r)
		// 600 queries for distinct denied names sent at once over UDP,
		// then every reply read: the per-agent bucket (burst 200) empties.
		const flood = `
import socket,struct,sys,random
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1<<20)
def q(i,name):
    h=struct.pack('>HHHHHH',i,0x0100,1,0,0,0)
    return h+b''.join(bytes([len(l)])+l.encode() for l in name.split('.'))+b'\x00'+struct.pack('>HH',1,1)
for i in range(600):
    s.sendto(q(i,'f%d.flood.example.test'%i),(sys.argv[1],53))
rc={}
try:
    while True:
        d=s.recv(4096); k=d[3]&15; rc[k]=rc.get(k,0)+1
except socket.timeout: pass
print(' '.join('%d=%d'%kv for kv in sorted(rc.items())))
`
		out, code := g.Run(20*time.Second, "python3", "-c", flood, nowhere4.String())
		if code != 0 {
			t.Fatalf("flood: exit %d: %s", code, out)
		}
		counts := map[int]int{}
		for _, f := range strings.Fields(out) {
			var k, v int
			if _, err := fmt.Sscanf(f, "%d=%d", &k, &v); err == nil {
				counts[k] = v
			}
		}
		t.Logf("flood replies by rcode: %v (3 NXDOMAIN, 5 REFUSED)", counts)
		if counts[5] == 0 || counts[3] == 0 {
			t.Errorf("want both NXDOMAIN and REFUSED replies to a flood of 600 queries, got %v", counts)
		}
		waitAudit(t, r, seq, "dns.query rate_limited", func(row appliance.AuditRow) bool {
			return row.Action == "dns.query" && row.Decision == "deny" && row.Reason == "rate_limited" && row.Actor == "agent:"+appliance.Agent
		})
		rows, err := appliance.AuditRowsAfter(g.Srv, seq)
		if err != nil {
			t.Fatal(err)
		}
		limited := 0
		for _, row := range rows {
			if row.Reason == "rate_limited" {
				limited++
			}
		}
		if limited > 2 {
			t.Errorf("%d rate_limited audit rows for one flood; want one per 10 s window", limited)
		}
		// let the bucket refill before anything else asks
		time.Sleep(2500 * time.Millisecond)
	})

	t.Run("the upstream server only ever saw A and AAAA of the allowed name", func(t *testing.T) {
		if len(g.DNS.Queries()) == 0 {
			t.Fatal("the upstream server saw no query at all")
		}
		qs := checkUpstreamSawOnlyAllowed(t, r)
		t.Logf("upstream DNS log: %d queries, all for %s A/AAAA", len(qs), appliance.APIHost)
	})
}
