package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/harness"
	"github.com/agentvault/agent-vault/internal/testutil/appliance"
	"github.com/agentvault/agent-vault/internal/testutil/netns"
)

// capRig is what the matrix needs of an appliance, whatever its capture mode.
type capRig struct {
	mode     string // gateway or local
	srv      *harness.Server
	ns       *netns.NS // where the server runs (its iptables)
	canary   *appliance.Canary
	received func() []harness.Received
	curl     func(args ...string) (stdout, stderr string, code int) // as the agent
	agentCmd func(ctx context.Context, name string, args ...string) *exec.Cmd
	audit    func(t *testing.T, args ...string) []map[string]any
	cli      func(t *testing.T, stdin string, args ...string) string
	restart  func(t *testing.T)
	// recreate deletes Agent and creates it again with the same binding
	recreate func(t *testing.T)
	caFile   string // the appliance's root, trusted by the agent's clients
	// what the upstream sees as the request's source (the broker), never
	// the agent's address
	brokerV4, brokerV6 netip.Addr
	// what a blocked non-80/443 TCP connect and a UDP/443 datagram end in
	blockedTCP, blockedUDP443 []string
	// admin-plane addresses an agent might try (tcp://ADDR)
	adminTargets []string
	// mode-specific checks, run after row 8 (the appliance still serving)
	extra []capCheck
}

type capCheck struct {
	name string
	fn   func(t *testing.T)
}

// Addresses of the fake internet (both topologies).
var (
	capUpV4, capUpV6 = netns.NetV4, netns.NetV6
	capCanV4         = appliance.CanaryV4
	capCanV6         = appliance.CanaryV6
)

func capAp(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

// capSecretFree fails if the secret appears in s.
func capSecretFree(t *testing.T, where, s string) {
	t.Helper()
	if strings.Contains(s, appliance.Secret) {
		t.Errorf("the secret appears in %s", where)
	}
}

func capRowsJSON(rows []map[string]any) string {
	b, _ := json.Marshal(rows)
	return string(b)
}

// capPick returns the rows whose fields equal want (nested "actor.name" too).
func capPick(rows []map[string]any, want map[string]string) []map[string]any {
	var out []map[string]any
	for _, r := range rows {
		ok := true
		for k, v := range want {
			if capField(r, k) != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, r)
		}
	}
	return out
}

func capField(r map[string]any, key string) string {
	var cur any = r
	for _, part := range strings.Split(key, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return ""
		}
		cur = m[part]
	}
	switch v := cur.(type) {
	case nil:
		return ""
	case string:
		return v
	case float64:
		return fmt.Sprint(int64(v))
	default:
		return fmt.Sprint(v)
	}
}

// capReceivedAt returns what the upstreams received for path.
func capReceivedAt(r *capRig, path string) []harness.Received {
	var out []harness.Received
	for _, rc := range r.received() {
		if rc.Path == path {
			out = append(out, rc)
		}
	}
	return out
}

func capCanaryZero(t *testing.T, r *capRig, what string) {
	t.Helper()
	if c, b, d := r.canary.Total(); c != 0 || b != 0 || d != 0 {
		t.Errorf("%s: the canary saw %d connections, %d bytes, %d datagrams; want nothing", what, c, b, d)
	}
}

// capDial runs the Go dial helper as the agent and returns target -> result.
func capDial(t *testing.T, r *capRig, targets ...string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := capAgentHelper(ctx, r.agentCmd, "dial", targets...).CombinedOutput()
	if err != nil {
		t.Fatalf("dial helper: %v: %s", err, out)
	}
	res := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, " ")
		res[k] = v
	}
	return res
}

func capOneOf(v string, allowed []string) bool {
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	return false
}

// capRunMatrix holds one appliance against rows 1-4, 6-8 and 10, then 9 (it
// restarts and finally stops the server), over IPv4 and IPv6.
func capRunMatrix(t *testing.T, r *capRig) {
	fams := []struct {
		name, flag string
		broker     netip.Addr
		up, canary netip.Addr
	}{{"v4", "-4", r.brokerV4, capUpV4, capCanV4}, {"v6", "-6", r.brokerV6, capUpV6, capCanV6}}

	t.Run("1 injection", func(t *testing.T) {
		for _, f := range fams {
			path := "/v1/row1-" + f.name
			out, errOut, code := r.curl(f.flag, "-i", "-H", "Authorization: Bearer placeholder", "https://"+appliance.APIHost+path)
			if code != 0 || !strings.HasPrefix(out, "HTTP/") || !strings.Contains(strings.SplitN(out, "\n", 2)[0], " 200") {
				t.Fatalf("%s: curl exit %d: %s %s", f.name, code, errOut, out)
			}
			capSecretFree(t, "the agent's response", out)
			got := capReceivedAt(r, path)
			if len(got) != 1 {
				t.Fatalf("%s: the upstream received %d requests for %s; want 1", f.name, len(got), path)
			}
			if a := got[0].Header.Get("Authorization"); a != "Bearer "+appliance.Secret {
				t.Errorf("%s: the upstream saw Authorization %q; want the real credential", f.name, a)
			}
			// The broker forwards from its own address, never the agent's. (Its
			// upstream pool is keyed by name, so a v6 agent connection may ride
			// a pooled v4 upstream connection to the same validated name.)
			src, err := netip.ParseAddrPort(got[0].Remote)
			if err != nil || (src.Addr().Unmap() != r.brokerV4 && src.Addr().Unmap() != r.brokerV6) {
				t.Errorf("%s: the upstream saw the request from %s; want the broker's %s or %s", f.name, got[0].Remote, r.brokerV4, r.brokerV6)
			}
			rows := r.audit(t, "--agent", appliance.Agent)
			capSecretFree(t, "audit rows", capRowsJSON(rows))
			intent := capPick(rows, map[string]string{"action": "request", "path": path})
			if len(intent) != 1 || capField(intent[0], "decision") != "allow" || capField(intent[0], "host") != appliance.APIHost ||
				capField(intent[0], "actor.name") != appliance.Agent || capField(intent[0], "credential") != "API_KEY" {
				t.Errorf("%s: request rows for %s: %s; want one allow row by %s", f.name, path, capRowsJSON(intent), appliance.Agent)
			}
			t.Logf("%s: client got 200 without the secret; upstream saw %q from %s; audit %s",
				f.name, got[0].Header.Get("Authorization")[:10]+"…", got[0].Remote, capRowsJSON(intent))
		}
	})

	t.Run("2 no service", func(t *testing.T) {
		for _, f := range fams {
			for _, host := range []string{appliance.OtherHost, appliance.CanaryHost} {
				// DNS denies the name (NXDOMAIN): deny by default at that layer
				if _, errOut, code := r.curl(f.flag, "https://"+host+"/row2-dns"); code != 6 {
					t.Errorf("%s %s: curl by name: exit %d %s; want 6 (could not resolve)", f.name, host, code, errOut)
				}
				// and HTTP denies it with the name's real address (what a
				// hard-coded IP or another resolver would give)
				ip := f.up
				if host == appliance.CanaryHost {
					ip = f.canary
				}
				path := "/row2-" + f.name
				out, errOut, code := r.curl(f.flag, "-i", "--resolve", host+":443:"+ip.String(), "https://"+host+path)
				if code != 0 || !strings.Contains(strings.SplitN(out, "\n", 2)[0], " 403") ||
					!strings.Contains(strings.ToLower(out), "x-agent-vault-error: no_service") {
					t.Errorf("%s %s: curl exit %d %s: %s; want 403 no_service", f.name, host, code, errOut, out)
				}
				if n := len(capReceivedAt(r, path)); n != 0 {
					t.Errorf("%s %s: the upstream received %d requests", f.name, host, n)
				}
				rows := capPick(r.audit(t, "--agent", appliance.Agent), map[string]string{"action": "request", "host": host, "path": path})
				if len(rows) != 1 || capField(rows[0], "decision") != "deny" {
					t.Errorf("%s %s: audit rows %s; want one deny", f.name, host, capRowsJSON(rows))
				} else if f.name == "v4" {
					t.Logf("%s: 403 no_service; audit %s", host, capRowsJSON(rows))
				}
			}
		}
		dns := capPick(r.audit(t, "--agent", appliance.Agent, "--action", "dns.query", "--decision", "deny"), nil)
		if len(dns) == 0 {
			t.Error("no denied dns.query rows for the names without a service")
		}
		capCanaryZero(t, r, "no service")
	})

	t.Run("3 SNI A Host B", func(t *testing.T) {
		for _, f := range fams {
			for _, proto := range []string{"--http1.1", "--http2"} {
				path := "/row3-" + f.name + proto
				out, errOut, code := r.curl(f.flag, proto, "-i", "-H", "Host: "+appliance.OtherHost, "https://"+appliance.APIHost+path)
				if code != 0 || !strings.Contains(strings.SplitN(out, "\n", 2)[0], " 421") {
					t.Errorf("%s %s: curl exit %d %s: %s; want 421", f.name, proto, code, errOut, out)
				}
				if n := len(capReceivedAt(r, path)); n != 0 {
					t.Errorf("%s %s: the upstream received %d requests", f.name, proto, n)
				}
				rows := capPick(r.audit(t, "--agent", appliance.Agent), map[string]string{"action": "request", "path": path})
				if len(rows) != 1 || capField(rows[0], "decision") != "deny" {
					t.Errorf("%s %s: audit rows %s; want one deny", f.name, proto, capRowsJSON(rows))
				}
			}
		}
	})

	t.Run("4 no SNI and unbound address", func(t *testing.T) {
		before := len(r.received())
		for _, f := range fams {
			// curl sends no SNI to an IP literal
			_, _, code := r.curl(f.flag, "https://"+capUrlHost(f.up)+"/row4-nosni")
			if code == 0 {
				t.Errorf("%s: a connection without SNI succeeded", f.name)
			}
			// the allowed name, sent to the canary's address: never resolved for it
			out, _, code := r.curl(f.flag, "--resolve", appliance.APIHost+":443:"+capUrlHost(f.canary), "https://"+appliance.APIHost+"/row4-unbound")
			if code == 0 {
				t.Errorf("%s: SNI %s to %s succeeded: %s", f.name, appliance.APIHost, f.canary, out)
			}
		}
		if n := len(r.received()); n != before {
			t.Errorf("the upstream received %d requests", n-before)
		}
		capCanaryZero(t, r, "unbound address")
		rows := r.audit(t, "--action", "connection")
		if n := len(capPick(rows, map[string]string{"reason": "no_sni"})); n < 2 {
			t.Errorf("no_sni rows: %d; want one per family: %s", n, capRowsJSON(rows))
		}
		if n := len(capPick(rows, map[string]string{"reason": "destination_not_resolved", "host": appliance.APIHost})); n < 2 {
			t.Errorf("destination_not_resolved rows: %d; want one per family: %s", n, capRowsJSON(rows))
		}
	})

	t.Run("6 direct IP, other ports, UDP 443", func(t *testing.T) {
		var targets []string
		for _, a := range []netip.Addr{capCanV4, capCanV6} {
			for _, p := range []uint16{22, 853, 8080} {
				targets = append(targets, "tcp://"+capAp(a, p))
			}
			for _, p := range []uint16{443, 853, 9999} {
				targets = append(targets, "udp://"+capAp(a, p))
			}
		}
		res := capDial(t, r, targets...)
		for _, tg := range targets {
			allowed := r.blockedTCP
			switch {
			case strings.HasPrefix(tg, "udp://") && strings.HasSuffix(tg, ":443"):
				allowed = r.blockedUDP443 // QUIC: rejected at once, so clients fall back to TCP
			case strings.HasPrefix(tg, "udp://"):
				allowed = append(append([]string{}, r.blockedTCP...), "timeout", "refused")
			}
			if !capOneOf(res[tg], allowed) {
				t.Errorf("%s: %q; want one of %v", tg, res[tg], allowed)
			}
		}
		t.Logf("dial results: %v", res)
		// direct IP on 80/443 is captured and ends in a denial, not at the canary
		for _, f := range fams {
			if out, _, code := r.curl(f.flag, "-i", "http://"+capUrlHost(f.canary)+"/row6"); code == 0 && !strings.Contains(out, " 403") {
				t.Errorf("%s: plain HTTP to the canary's IP: %s", f.name, out)
			}
			r.curl(f.flag, "-k", "https://"+capUrlHost(f.canary)+"/row6")
		}
		capCanaryZero(t, r, "direct IP and other ports")
	})

	t.Run("8 admin plane and bypass", func(t *testing.T) {
		res := capDial(t, r, r.adminTargets...)
		for _, tg := range r.adminTargets {
			if res[tg] == "connected" {
				t.Errorf("the agent reached the admin plane at %s", tg)
			}
		}
		t.Logf("admin plane from the agent: %v", res)
		// The broker's own upstream packets carry the bypass mark (so no rule
		// of ours captures them): counting rules in the broker's namespace
		// see marked packets to the upstream's port 443 and no unmarked one.
		const mark = "0x41560000/0xffffffff"
		type fam struct{ tool, up string }
		fams := []fam{{"iptables", capUpV4.String()}, {"ip6tables", capUpV6.String()}}
		rules := func(f fam) [][]string {
			base := []string{"OUTPUT", "-d", f.up, "-p", "tcp", "--dport", "443", "-m", "mark"}
			return [][]string{append(append([]string{}, base...), "--mark", mark), append(append([]string{}, base...), "!", "--mark", mark)}
		}
		for _, f := range fams {
			for _, rl := range rules(f) {
				capIptables(t, r, f.tool, append([]string{"-t", "mangle", "-I"}, rl...)...)
				defer capIptables(t, r, f.tool, append([]string{"-t", "mangle", "-D"}, rl...)...)
			}
		}
		for _, fl := range []string{"-4", "-6"} {
			if _, errOut, code := r.curl(fl, "https://"+appliance.APIHost+"/row8-mark"+fl); code != 0 {
				t.Errorf("%s: curl exit %d: %s", fl, code, errOut)
			}
		}
		var marked, unmarked int
		for _, f := range fams {
			out := capIptables(t, r, f.tool, "-t", "mangle", "-L", "OUTPUT", "-v", "-n", "-x")
			for _, line := range strings.Split(out, "\n") {
				fs := strings.Fields(line)
				if len(fs) < 2 || !strings.Contains(line, "mark match") {
					continue
				}
				var n int
				fmt.Sscan(fs[0], &n)
				if strings.Contains(line, "mark match !") {
					unmarked += n
				} else {
					marked += n
				}
			}
		}
		if marked == 0 || unmarked != 0 {
			t.Errorf("broker packets to the upstream: %d with the bypass mark, %d without; want some, none", marked, unmarked)
		}
		t.Logf("broker packets to the upstream: %d with the bypass mark, %d without", marked, unmarked)
	})

	for _, c := range r.extra {
		t.Run(c.name, c.fn)
	}

	t.Run("10 revoke closes a live keep-alive connection", func(t *testing.T) {
		capRevokeLive(t, r)
	})

	t.Run("9 kill -9, restart, cleanup", func(t *testing.T) {
		capCrashAndCleanup(t, r, fams[0].up)
	})
}

func capUrlHost(a netip.Addr) string {
	if a.Is6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}

// capRevokeLive holds a kept-alive connection as the agent, revokes the agent
// and waits (bounded) for the broker to close it; a new connection then
// gets 403. The agent is re-created afterwards under another name is not
// needed: row 9 creates its own.
func capRevokeLive(t *testing.T, r *capRig) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := capAgentHelper(ctx, r.agentCmd, "hold", r.caFile, "tcp4", appliance.APIHost, "/row10")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	lines := make(chan string, 8)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func(what string) string {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("helper ended before %s: %s", what, stderr.String())
			}
			return l
		case <-time.After(20 * time.Second):
			t.Fatalf("no %s from the helper within 20 s", what)
		}
		return ""
	}
	if l := next("first status"); l != "status 200" {
		t.Fatalf("first request: %q", l)
	}
	start := time.Now()
	r.cli(t, "", "agent", "revoke", appliance.Agent)
	if l := next("close"); l != "closed" {
		t.Fatalf("after revoke: %q", l)
	}
	took := time.Since(start)
	// The invariant is 1 s; allow slack for a loaded machine, report the figure.
	t.Logf("revoke -> connection closed in %v (CLI round trip included)", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("the live connection closed %v after revoke; the invariant is 1 s", took)
	}
	if l := next("second status"); l != "status 403" {
		t.Errorf("a new connection after revoke: %q; want status 403", l)
	}
	rows := capPick(r.audit(t, "--agent", appliance.Agent), map[string]string{"action": "request", "path": "/row10", "decision": "deny"})
	if len(rows) != 1 || capField(rows[0], "reason") == "" {
		t.Errorf("deny rows after revoke: %s", capRowsJSON(rows))
	}
	io.Copy(io.Discard, stdout)
}

// capCrashAndCleanup kills the broker with SIGKILL, checks nothing leaks while
// it is down, restarts it (rules re-installed without errors, brokering
// again), stops it, runs `server --cleanup` and checks no AV- rule is left
// (and, with the capture gone, that traffic is no longer captured at all).
func capCrashAndCleanup(t *testing.T, r *capRig, up netip.Addr) {
	r.srv.Kill()
	before := len(r.received())
	down := []string{"tcp://" + capAp(capUpV4, 443), "tcp://" + capAp(capUpV6, 443), "tcp://" + capAp(capCanV4, 443),
		"tcp://" + capAp(capCanV4, 8080), "tcp://" + capAp(capCanV6, 80), "udp://" + capAp(capCanV4, 53), "udp://" + capAp(capCanV4, 443)}
	res := capDial(t, r, down...)
	for _, tg := range down {
		if v := res[tg]; v == "connected" || v == "reply" {
			t.Errorf("broker down: %s %s", tg, v)
		}
	}
	t.Logf("while the broker is down: %v", res)
	if _, _, code := r.curl("--connect-timeout", "2", "--max-time", "4", "--resolve", appliance.APIHost+":443:"+up.String(),
		"-H", "Authorization: Bearer placeholder", "https://"+appliance.APIHost+"/row9-down"); code == 0 {
		t.Error("broker down: curl to the API succeeded")
	}
	if n := len(r.received()) - before; n != 0 {
		t.Errorf("broker down: the upstream received %d requests", n)
	}
	capCanaryZero(t, r, "broker down")

	logBefore := len(r.srv.Log())
	r.restart(t)
	for _, line := range strings.Split(r.srv.Log()[logBefore:], "\n") {
		if strings.Contains(line, "level=ERROR") || strings.Contains(line, "could not remove") {
			t.Errorf("restart logged: %s", line)
		}
	}
	r.recreate(t)
	for _, fl := range []string{"-4", "-6"} {
		path := "/row9-after" + fl
		if out, errOut, code := r.curl(fl, "-H", "Authorization: Bearer placeholder", "https://"+appliance.APIHost+path); code != 0 {
			t.Errorf("after restart %s: curl exit %d: %s %s", fl, code, errOut, out)
		}
		if got := capReceivedAt(r, path); len(got) != 1 || got[0].Header.Get("Authorization") != "Bearer "+appliance.Secret {
			t.Errorf("after restart %s: the upstream received %d requests", fl, len(got))
		}
	}

	if err := r.srv.Stop(); err != nil {
		t.Errorf("server stop: %v", err)
	}
	if !strings.Contains(capSaveRules(t, r, "iptables-save"), "AV-") {
		t.Error("after a stop the rules are gone: agents would not fail closed")
	}
	if res := r.srv.CLI("", nil, "server", "--cleanup", "--data-dir", r.srv.DataDir); res.Code != 0 {
		t.Fatalf("server --cleanup: exit %d: %s", res.Code, res.Stderr)
	}
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		if out := capSaveRules(t, r, tool); strings.Contains(out, "AV-") {
			t.Errorf("%s after --cleanup still holds AV- rules:\n%s", tool, out)
		}
	}
	// Nothing captures any more (no rule, no eBPF program): the canary is
	// reached directly. (The test's last connection: it is meant to arrive.)
	if res := capDial(t, r, "tcp://"+capAp(capCanV4, 8080)); res["tcp://"+capAp(capCanV4, 8080)] != "connected" {
		t.Errorf("after --cleanup the agent's traffic is still captured or blocked: %v", res)
	}
}

// capSaveRules runs iptables-save or ip6tables-save in the server's namespace.
func capSaveRules(t *testing.T, r *capRig, tool string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := r.ns.Command(ctx, tool).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", tool, err, out)
	}
	return string(out)
}

// capIptables runs an iptables tool in the server's namespace.
func capIptables(t *testing.T, r *capRig, tool string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := r.ns.Command(ctx, tool, append([]string{"-w", "5"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v: %s", tool, args, err, out)
	}
	return string(out)
}
