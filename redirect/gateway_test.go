package redirect

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/testutil/netns"
)

const (
	gwTransparent = 14323
	gwDNS         = 14353
	gwAdmin       = 14321
)

func requireGatewayTools(t *testing.T) {
	netns.RequirePrivileged(t, "ip", "nsenter", "iptables", "ip6tables", "iptables-save", "ip6tables-save", "curl", "dig")
}

// saveRules returns iptables-save / ip6tables-save of ns without comments
// and counters, so two dumps of the same rules compare equal.
func saveRules(t *testing.T, ns *netns.NS, bin string) string {
	t.Helper()
	out, err := ns.Command(context.Background(), bin).CombinedOutput()
	if err != nil {
		t.Fatalf("%s in %s: %v: %s", bin, ns.Name, err, out)
	}
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") { // ":CHAIN POLICY [pkts:bytes]"
			if i := strings.LastIndex(l, " ["); i > 0 {
				l = l[:i]
			}
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

func TestGatewayCapture(t *testing.T) {
	requireGatewayTools(t)
	topo := netns.NewTopology(t)
	gw, agent, nett := topo.GW, topo.Agent, topo.Net

	// The broker side, in the gateway namespace.
	echo := &origEcho{}
	go echo.serve(listenIn(t, gw, "tcp", ":14323"), func(c net.Conn) (string, error) {
		o, err := OriginalDst(c)
		return o.String(), err
	})
	go serveDNS(listenPacketIn(t, gw, "udp", ":14353"), netip.MustParseAddr("10.77.2.99"))
	go serveDNSTCP(listenIn(t, gw, "tcp", ":14353"), netip.MustParseAddr("10.77.2.99"))
	admin := &canary{}
	go admin.serveTCP(listenIn(t, gw, "tcp", ":14321"))

	// The "internet": canaries on every port that must stay silent.
	quiet := &canary{}
	for _, p := range []string{"8080", "22", "853", "443", "80"} {
		go quiet.serveTCP(listenIn(t, nett, "tcp", ":"+p))
	}
	for _, p := range []string{"443", "853", "53"} {
		go quiet.serveUDP(listenPacketIn(t, nett, "udp", ":"+p))
	}
	// Positive control: before any rule the agent reaches the canary, so
	// its silence later means something.
	if err := dialFrom(agent, "tcp", "10.77.2.2:8080", 3*time.Second); err != nil {
		t.Fatalf("control: agent cannot reach the canary before any rule: %v", err)
	}
	waitFor(t, func() bool { return quiet.bytes.Load() == int64(len("canary-bytes")) }, "control bytes at the canary")
	quiet.conns.Store(0)
	quiet.bytes.Store(0)

	// A rule of someone else's that Cleanup must leave alone.
	if out, err := gw.Command(context.Background(), "iptables", "-A", "FORWARD", "-s", "10.77.9.9", "-j", "ACCEPT").CombinedOutput(); err != nil {
		t.Fatalf("foreign rule: %v: %s", err, out)
	}
	before4, before6 := saveRules(t, gw, "iptables-save"), saveRules(t, gw, "ip6tables-save")

	cfg := GatewayConfig{Ifaces: []string{topo.GWAgentIface}, TransparentPort: gwTransparent, DNSPort: gwDNS, AdminPort: gwAdmin, IPv6: true}
	plan := GatewayPlan(cfg)
	if err := gw.Do(func() error { return Apply(plan) }); err != nil {
		t.Fatalf("apply: %v", err)
	}
	t.Cleanup(func() { gw.Do(Cleanup) })
	first4, first6 := saveRules(t, gw, "iptables-save"), saveRules(t, gw, "ip6tables-save")

	t.Run("curl lands on the listener with the original destination", func(t *testing.T) {
		for _, tc := range []struct{ url, want string }{
			{"http://10.77.2.2:443/", "orig=10.77.2.2:443"},
			{"http://10.77.2.2/", "orig=10.77.2.2:80"},
			{"http://[fd77:2::2]:443/", "orig=[fd77:2::2]:443"},
			{"http://[fd77:2::2]/", "orig=[fd77:2::2]:80"},
		} {
			out, err := agent.Command(context.Background(), "curl", "-sS", "--max-time", "5", tc.url).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != tc.want {
				t.Errorf("curl %s = %q, %v; want %q", tc.url, out, err, tc.want)
			}
		}
	})

	t.Run("dig to any resolver is answered by the DNS port", func(t *testing.T) {
		for _, server := range []string{"@10.77.2.2", "@fd77:2::2", "@10.77.2.77"} {
			for _, tcp := range []string{"+notcp", "+tcp"} {
				out, err := agent.Command(context.Background(), "dig", server, tcp, "+time=2", "+tries=1", "+short", "api.example.test", "A").CombinedOutput()
				if err != nil || strings.TrimSpace(string(out)) != "10.77.2.99" {
					t.Errorf("dig %s %s = %q, %v; want 10.77.2.99", server, tcp, out, err)
				}
			}
		}
	})

	t.Run("other ports, 853 and the admin port are unreachable", func(t *testing.T) {
		var wg sync.WaitGroup
		for _, addr := range []string{"10.77.2.2:8080", "10.77.2.2:22", "10.77.2.2:853", "[fd77:2::2]:8080", "[fd77:2::2]:22", "[fd77:2::2]:853"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := dialFrom(agent, "tcp", addr, 400*time.Millisecond); err == nil {
					t.Errorf("agent reached %s", addr)
				}
			}()
		}
		for _, addr := range []string{"10.77.1.1:14321", "[fd77:1::1]:14321", "10.77.2.1:14321"} {
			err := dialFrom(agent, "tcp", addr, 2*time.Second)
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("admin port %s from the agent: %v, want connection refused", addr, err)
			}
		}
		for _, addr := range []string{"10.77.2.2:853", "[fd77:2::2]:853"} {
			if err := udpRoundTrip(agent, addr, 300*time.Millisecond); !isTimeout(err) {
				t.Errorf("udp %s: %v, want silence", addr, err)
			}
		}
		wg.Wait()
	})

	t.Run("udp 443 is rejected with port unreachable", func(t *testing.T) {
		for _, addr := range []string{"10.77.2.2:443", "[fd77:2::2]:443"} {
			if err := udpRoundTrip(agent, addr, 3*time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("udp %s: %v, want ECONNREFUSED from ICMP port unreachable", addr, err)
			}
		}
	})

	if n, b, p := quiet.conns.Load(), quiet.bytes.Load(), quiet.packets.Load(); n+b+p != 0 {
		t.Errorf("the net namespace saw %d connections, %d bytes, %d datagrams; want none", n, b, p)
	}
	if n := admin.conns.Load(); n != 0 {
		t.Errorf("admin listener accepted %d connections from the agent", n)
	}

	t.Run("apply is idempotent and repairs a damaged install", func(t *testing.T) {
		for i := 0; i < 2; i++ {
			if err := gw.Do(func() error { return Apply(plan) }); err != nil {
				t.Fatalf("re-apply %d: %v", i, err)
			}
		}
		// What a crash mid-change could leave: a stray rule and a second jump.
		for _, args := range [][]string{
			{"iptables", "-A", "AV-FORWARD", "-j", "ACCEPT"},
			{"iptables", "-A", "FORWARD", "-j", "AV-FORWARD"},
			{"ip6tables", "-t", "nat", "-A", "PREROUTING", "-j", "AV-PREROUTING"},
		} {
			if out, err := gw.Command(context.Background(), args[0], args[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v: %s", args, err, out)
			}
		}
		if err := gw.Do(func() error { return Apply(plan) }); err != nil {
			t.Fatalf("repair apply: %v", err)
		}
		if got := saveRules(t, gw, "iptables-save"); got != first4 {
			t.Errorf("v4 rules changed by re-apply:\n%s\nwant\n%s", got, first4)
		}
		if got := saveRules(t, gw, "ip6tables-save"); got != first6 {
			t.Errorf("v6 rules changed by re-apply:\n%s\nwant\n%s", got, first6)
		}
	})

	t.Run("cleanup except keeps the live plan and removes stale chains", func(t *testing.T) {
		for _, args := range [][]string{
			{"iptables", "-N", "AV-STALE"},
			{"iptables", "-A", "AV-STALE", "-j", "DROP"},
			{"iptables", "-I", "OUTPUT", "-p", "tcp", "-j", "AV-STALE"},
			{"ip6tables", "-t", "mangle", "-N", "AV-OLD"},
		} {
			if out, err := gw.Command(context.Background(), args[0], args[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v: %s", args, err, out)
			}
		}
		if err := gw.Do(func() error { return CleanupExcept(plan) }); err != nil {
			t.Fatalf("cleanup except: %v", err)
		}
		if got := saveRules(t, gw, "iptables-save"); got != first4 {
			t.Errorf("v4 after CleanupExcept:\n%s\nwant\n%s", got, first4)
		}
		if got := saveRules(t, gw, "ip6tables-save"); strings.Contains(got, "AV-OLD") {
			t.Errorf("v6 after CleanupExcept still has AV-OLD:\n%s", got)
		}
	})

	t.Run("cleanup leaves no trace and nothing else changed", func(t *testing.T) {
		if err := gw.Do(Cleanup); err != nil {
			t.Fatalf("cleanup: %v", err)
		}
		after4, after6 := saveRules(t, gw, "iptables-save"), saveRules(t, gw, "ip6tables-save")
		if strings.Contains(after4+after6, "AV-") {
			t.Errorf("AV- left after cleanup:\n%s\n%s", after4, after6)
		}
		// (iptables-nft keeps the now empty nat table: compare rules only.)
		if rulesOnly(after4) != rulesOnly(before4) || rulesOnly(after6) != rulesOnly(before6) {
			t.Errorf("cleanup changed foreign rules:\n%s\nwant\n%s", after4, before4)
		}
		if err := gw.Do(Cleanup); err != nil {
			t.Errorf("second cleanup: %v", err)
		}
	})
}

func rulesOnly(save string) string {
	var out []string
	for _, l := range strings.Split(save, "\n") {
		if strings.HasPrefix(l, "-A ") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// waitFor polls cond for up to 3 s.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for i := 0; i < 300; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// With IPv6 off, the agents' IPv6 traffic is dropped entirely (fail
// closed) while IPv4 is still captured.
func TestGatewayIPv6OffFailsClosed(t *testing.T) {
	requireGatewayTools(t)
	topo := netns.NewTopology(t)
	gw, agent, nett := topo.GW, topo.Agent, topo.Net
	echo := &origEcho{}
	go echo.serve(listenIn(t, gw, "tcp", ":14323"), func(c net.Conn) (string, error) {
		o, err := OriginalDst(c)
		return o.String(), err
	})
	quiet := &canary{}
	go quiet.serveTCP(listenIn(t, nett, "tcp", "[fd77:2::2]:443"))
	cfg := GatewayConfig{Ifaces: []string{topo.GWAgentIface}, TransparentPort: gwTransparent, DNSPort: gwDNS, AdminPort: gwAdmin}
	if err := gw.Do(func() error { return Apply(GatewayPlan(cfg)) }); err != nil {
		t.Fatalf("apply: %v", err)
	}
	t.Cleanup(func() { gw.Do(Cleanup) })
	if out, err := agent.Command(context.Background(), "curl", "-sS", "--max-time", "5", "http://10.77.2.2:443/").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "orig=10.77.2.2:443" {
		t.Errorf("v4 curl = %q, %v", out, err)
	}
	for _, addr := range []string{"[fd77:2::2]:443", "[fd77:1::1]:14323"} {
		if err := dialFrom(agent, "tcp", addr, 400*time.Millisecond); err == nil {
			t.Errorf("agent reached %s over IPv6 with IPv6 off", addr)
		}
	}
	if n := quiet.conns.Load(); n != 0 {
		t.Errorf("net side saw %d IPv6 connections", n)
	}
}
