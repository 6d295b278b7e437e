package e2e

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/testutil/appliance"
	"github.com/agentvault/agent-vault/internal/testutil/netns"
)

// The DNS half of the issue in local mode (eBPF sendmsg/recvmsg/connect
// hooks on the agents' cgroup): an agent process whose resolv.conf names an
// address that exists nowhere is answered by the appliance from any
// resolver address, UDP and TCP, v4 and v6, and dig accepts the replies
// (recvmsg restored their source address); denied names never leave; curl
// by name is brokered; and a process that changes its network namespace
// reaches nothing.
func TestDNSLocal(t *testing.T) {
	l := appliance.StartLocal(t)
	r := localRig(l)
	api4, api6 := netns.NetV4, netns.NetV6
	nowhere4, nowhere6 := netip.MustParseAddr(appliance.Resolver), netip.MustParseAddr("fd77:3::53")
	resolvers := []resolver{
		{"an address that exists nowhere", nowhere4},
		{"an address that exists nowhere", nowhere6},
		{"the real upstream server", api4},
		{"the real upstream server's v6 address", api6},
		{"the canary", appliance.CanaryV4},
		{"the canary", appliance.CanaryV6},
		{"a loopback stub resolver's address", netip.MustParseAddr("127.0.0.53")},
		{"v6 loopback", netip.IPv6Loopback()},
		{"the appliance's own address", appliance.LocalV4},
		{"the appliance's own address", appliance.LocalV6},
	}

	t.Run("any resolver address is answered by the appliance", func(t *testing.T) {
		checkAnyResolverAnswered(t, r, resolvers, api4, api6)
	})

	t.Run("libc getent resolves through resolv.conf, UDP and TCP", func(t *testing.T) {
		checkGetent(t, r, nowhere4, nowhere6, api4, api6)
	})

	t.Run("denied names NXDOMAIN, HTTPS empty, audited", func(t *testing.T) {
		for i, rv := range resolvers {
			name := []string{appliance.OtherHost, appliance.CanaryHost}[i%2]
			seq := lastSeq(t, r)
			res := dig(r, rv.addr.String(), i%3 == 0, "A", name)
			if res.Status != "NXDOMAIN" || !res.SOA {
				t.Errorf("dig @%s A %s: status %q soa %v\n%s", rv.addr, name, res.Status, res.SOA, res.Out)
			}
			waitAudit(t, r, seq, "dns.query deny "+name, dnsRow(name, "A", "deny", "no_service_for_host"))
		}
		seq := lastSeq(t, r)
		res := dig(r, "", false, "HTTPS", appliance.APIHost)
		if res.Status != "NOERROR" || len(res.Answers) != 0 {
			t.Errorf("dig HTTPS %s: %q %v", appliance.APIHost, res.Status, res.Answers)
		}
		waitAudit(t, r, seq, "dns.query HTTPS", dnsRow(appliance.APIHost, "HTTPS", "deny", "https_svcb_blocked"))
	})

	t.Run("curl by name is brokered over v4 and v6", func(t *testing.T) {
		for _, fam := range []struct{ flag string }{{"-4"}, {"-6"}} {
			before := len(l.Received())
			out, errOut, code := l.Curl(fam.flag, "--max-time", "3",
				"-H", "Authorization: Bearer placeholder", "https://"+appliance.APIHost+"/v1/local"+fam.flag)
			if code != 0 {
				t.Fatalf("curl %s: exit %d: %s", fam.flag, code, errOut)
			}
			got := l.Received()[before:]
			if len(got) != 1 || got[0].Header.Get("Authorization") != "Bearer "+appliance.Secret {
				t.Fatalf("curl %s: upstream received %+v", fam.flag, got)
			}
			// (curl's remote_ip would show the broker's address: local mode
			// does not rewrite getpeername)
			if strings.Contains(out, appliance.Secret) || !strings.Contains(out, `"path":"/v1/local`+fam.flag+`"`) {
				t.Fatalf("curl %s: %q", fam.flag, out)
			}
		}
	})

	t.Run("bypasses", func(t *testing.T) {
		var all []bypass
		all = append(all, localBypasses(l, r, false)...)
		all = append(all, localBypasses(l, r, true)...)
		blocked := 0
		for _, s := range all {
			if t.Run(fam(s.dst)+"/"+s.name, func(t *testing.T) { runBypass(t, r, s, nil) }) {
				blocked++
			}
		}
		t.Logf("bypass scenarios (local mode): %d blocked of %d", blocked, len(all))
	})

	t.Run("the upstream server only ever saw A and AAAA of the allowed name", func(t *testing.T) {
		checkUpstreamSawOnlyAllowed(t, r)
	})
}

// localBypasses are the bypasses of local mode: the gateway's list where it
// applies, plus a process of the agents' cgroup that enters another network
// namespace (the fake internet's own, where the canary is a local address:
// without the programs' netns check the connect would succeed there).
func localBypasses(l *appliance.Local, r *rig, v6 bool) []bypass {
	canary, api, f := appliance.CanaryV4, netns.NetV4, "-4"
	if v6 {
		canary, api, f = appliance.CanaryV6, netns.NetV6, "-6"
	}
	curl := func(args ...string) func() (string, int) {
		return cmd(r, "curl", append([]string{"-sS", f, "--max-time", "3", "--cacert", r.caFile}, args...)...)
	}
	inNetNS := func(name string, args ...string) func() (string, int) {
		return cmd(r, "nsenter", append([]string{"--net=" + l.Net.Path, "--", name}, args...)...)
	}
	probeIn := func(proto string, port int) func() (string, int) {
		return inNetNS("python3", "-c", probeScript, proto, canary.String(), strconv.Itoa(port))
	}
	return []bypass{
		{name: "direct-IP https to the canary (no SNI)", dst: canary,
			run: curl("https://" + urlHost(canary) + "/"), codes: []int{35},
			audit: connRow("no_sni", ""), auditS: "connection deny no_sni"},
		{name: "allowed SNI to an address never pinned for it", dst: canary,
			run:   curl("--resolve", appliance.APIHost+":443:"+urlHost(canary), "https://"+appliance.APIHost+"/"),
			codes: []int{35}, audit: connRow("destination_not_resolved", appliance.APIHost), auditS: "connection deny destination_not_resolved"},
		{name: "ClientHello without SNI to the API's own address", dst: api,
			run: func() (string, int) {
				return r.run(10*time.Second, "sh", "-c", "openssl s_client -noservername -connect "+
					netip.AddrPortFrom(api, 443).String()+" </dev/null 2>&1")
			},
			codes: []int{1}, want: "alert", audit: connRow("no_sni", ""), auditS: "connection deny no_sni"},
		{name: "DNS to the canary as resolver", dst: canary,
			run:   cmd(r, "dig", "+time=2", "+tries=1", "@"+canary.String(), "exfil-"+f+".example.test", "TXT"),
			codes: []int{0}, want: "status: NXDOMAIN",
			audit: dnsRow("exfil-"+f+".example.test", "TXT", "deny", "no_service_for_host"), auditS: "dns.query deny"},
		{name: "tcp/22 to the canary", dst: canary, eperm: true,
			run: func() (string, int) { return probe(r, "tcp", canary, 22) }, codes: []int{5}, want: "eperm"},
		{name: "DoT (tcp/853) to the canary", dst: canary, eperm: true,
			run: func() (string, int) { return probe(r, "tcp", canary, 853) }, codes: []int{5}, want: "eperm"},
		{name: "DoQ (udp/853) to the canary", dst: canary, eperm: true,
			run: func() (string, int) { return probe(r, "udp", canary, 853) }, codes: []int{5}, want: "eperm"},
		{name: "QUIC (udp/443) to the canary", dst: canary, eperm: true,
			run: func() (string, int) { return probe(r, "udp", canary, 443) }, codes: []int{5}, want: "eperm"},
		{name: "other UDP (udp/9999) to the canary", dst: canary, eperm: true,
			run: func() (string, int) { return probe(r, "udp", canary, 9999) }, codes: []int{5}, want: "eperm"},
		{name: "netns change: https to the canary from the internet's namespace", dst: canary, eperm: true,
			run: probeIn("tcp", 443), codes: []int{5}, want: "eperm"},
		{name: "netns change: tcp/22 to the canary from the internet's namespace", dst: canary, eperm: true,
			run: probeIn("tcp", 22), codes: []int{5}, want: "eperm"},
		{name: "netns change: udp/53 to the canary from the internet's namespace", dst: canary, eperm: true,
			run: probeIn("udp", 53), codes: []int{5}, want: "eperm"},
		{name: "netns change: DNS for a denied name to the real upstream server", dst: api, eperm: true,
			run:   inNetNS("dig", "+time=1", "+tries=1", "@"+api.String(), appliance.OtherHost, "A"),
			codes: []int{9, 10}, want: "ermission denied"},
	}
}
