package e2e

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/testutil/appliance"
)

// The DNS scenarios gateway and local mode share (dns_gateway_test.go,
// dns_local_test.go).

// resolver is an address the agent may name as its resolver, and what is
// there.
type resolver struct {
	what string
	addr netip.Addr
}

// checkAnyResolverAnswered digs A and AAAA of the API host at every
// resolver address, over UDP and TCP: the appliance must answer each with
// the API's address of that family (api4, api6), from the address asked (dig
// accepts only that), and the canary must see no DNS traffic.
func checkAnyResolverAnswered(t *testing.T, r *rig, resolvers []resolver, api4, api6 netip.Addr) {
	t.Helper()
	before := seen(r)
	n := 0
	for _, rv := range resolvers {
		for _, tcp := range []bool{false, true} {
			for _, q := range []struct {
				qtype string
				want  netip.Addr
			}{{"A", api4}, {"AAAA", api6}} {
				res := dig(r, rv.addr.String(), tcp, q.qtype, appliance.APIHost)
				n++
				if res.Status != "NOERROR" || !slices.Equal(res.Answers, []string{q.qtype + " " + q.want.String()}) {
					t.Errorf("dig @%s (%s) tcp=%v %s: status %q answers %v\n%s", rv.addr, rv.what, tcp, q.qtype, res.Status, res.Answers, res.Out)
				}
				// dig only accepts a reply from the address it asked (the
				// kernel, or recvmsg in local mode, restored the source address)
				if !strings.HasPrefix(res.Server, rv.addr.String()+"#53") {
					t.Errorf("dig @%s (%s) tcp=%v: reply came from %q", rv.addr, rv.what, tcp, res.Server)
				}
			}
		}
	}
	after := seen(r)
	if after.datagrams != before.datagrams || after.conns != before.conns {
		t.Errorf("the canary saw DNS traffic: %+v -> %+v", before, after)
	}
	t.Logf("%d queries to %d resolver addresses (UDP and TCP, A and AAAA) answered by the appliance", n, len(resolvers))
}

// checkGetent resolves through libc (getent) with a resolv.conf naming an
// address that exists nowhere, v4 and v6, over UDP and TCP (use-vc): the API
// host resolves to both its addresses, the other host is not found.
func checkGetent(t *testing.T, r *rig, nowhere4, nowhere6, api4, api6 netip.Addr) {
	t.Helper()
	for _, rc := range []string{
		"nameserver " + nowhere4.String() + "\noptions timeout:2 attempts:1\n",
		"nameserver " + nowhere4.String() + "\noptions timeout:2 attempts:1 use-vc\n",
		"nameserver " + nowhere6.String() + "\noptions timeout:2 attempts:1\n",
		"nameserver " + nowhere6.String() + "\noptions timeout:2 attempts:1 use-vc\n",
	} {
		restore := r.setResolvConf(t, rc)
		out, code := r.run(10*time.Second, "getent", "ahosts", appliance.APIHost)
		if code != 0 || !strings.Contains(out, api4.String()) || !strings.Contains(out, api6.String()) {
			t.Errorf("getent ahosts %s with %q: exit %d\n%s", appliance.APIHost, rc, code, out)
		}
		out, code = r.run(10*time.Second, "getent", "hosts", appliance.OtherHost)
		if code != 2 {
			t.Errorf("getent hosts %s (denied) with %q: exit %d, want 2 (not found)\n%s", appliance.OtherHost, rc, code, out)
		}
		restore()
	}
}

// checkUpstreamSawOnlyAllowed checks that the upstream DNS server was only
// ever asked A and AAAA of the allowed name, and that the canary received
// nothing at all; it returns the upstream's queries.
func checkUpstreamSawOnlyAllowed(t *testing.T, r *rig) []string {
	t.Helper()
	qs := r.dns.Queries()
	for _, q := range qs {
		if q != appliance.APIHost+". A" && q != appliance.APIHost+". AAAA" {
			t.Errorf("the upstream DNS server received %q", q)
		}
	}
	if c, b, d := r.canary.Total(); c+b+d != 0 {
		t.Errorf("canary: %d conns, %d bytes, %d datagrams", c, b, d)
	}
	return qs
}
