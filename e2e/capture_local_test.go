package e2e

import (
	"context"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/testutil/appliance"
)

// TestCaptureLocal holds local mode (eBPF cgroup hooks plus the iptables
// backstop, shape L) against the matrix: agents are processes in a cgroup
// bound to the agent, in the broker's own namespace, with no proxy
// settings; v4 and v6.
func TestCaptureLocal(t *testing.T) {
	l := appliance.StartLocal(t)
	r := &capRig{
		mode: "local", srv: l.Srv, ns: l.NS, canary: l.Canary, received: l.Received,
		curl: l.Curl, agentCmd: l.AgentCommand, audit: l.AuditJSON, cli: l.CLI, caFile: l.BrokerCAFile,
		brokerV4: appliance.LocalV4, brokerV6: appliance.LocalV6,
		blockedTCP:    []string{"eperm"}, // connect4/6 deny
		blockedUDP443: []string{"eperm"}, // sendmsg/connect deny: QUIC fails at once
		adminTargets: []string{"tcp://127.0.0.1:14321", "tcp://[::1]:14321", "tcp://127.0.0.1:14322",
			"tcp://" + capAp(appliance.LocalV4, 14321)},
		restart: l.Restart,
	}
	r.recreate = func(t *testing.T) {
		l.CLI(t, "", "agent", "delete", appliance.Agent)
		l.CLI(t, "", "agent", "create", "--vault", appliance.Vault, appliance.Agent, "--cgroup", l.AgentCgroupRel)
	}
	outside := func(ctx context.Context, name string, args ...string) *exec.Cmd {
		return l.Command(ctx, "", name, args...)
	}
	upCA := filepath.Join(l.Dir, "upstream-ca.pem")
	r.extra = []capCheck{
		{"a process outside the agents' cgroup is untouched", func(t *testing.T) {
			for _, up := range []netip.Addr{capUpV4, capUpV6} {
				path := "/outside-" + up.String()
				out, errOut, code := l.CurlIn("", "--cacert", upCA, "--resolve", appliance.APIHost+":443:"+up.String(),
					"-H", "Authorization: Bearer placeholder", "https://"+appliance.APIHost+path)
				if code != 0 {
					t.Fatalf("outside the cgroup, curl to the real upstream %s: exit %d %s %s", up, code, errOut, out)
				}
				got := capReceivedAt(r, path)
				if len(got) != 1 || got[0].Header.Get("Authorization") != "Bearer placeholder" {
					t.Errorf("outside the cgroup the upstream saw %+v; want the request untouched", got)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := capAgentHelper(ctx, outside, "dial", "tcp://"+capAp(capUpV4, 443), "tcp://"+capAp(capUpV6, 443)).CombinedOutput()
			if err != nil || strings.Count(string(out), "connected") != 2 {
				t.Errorf("outside the cgroup, TCP straight to the upstream: %v %s; want connected", err, out)
			}
			if n := len(capPick(l.AuditJSON(t), map[string]string{"path": "/outside-" + capUpV4.String()})); n != 0 {
				t.Errorf("a process outside the cgroup was audited (%d rows)", n)
			}
		}},
		{"a cgroup bound to no agent is denied and audited", func(t *testing.T) {
			before := len(l.Received())
			for _, up := range []string{capUpV4.String(), "[" + capUpV6.String() + "]"} {
				out, _, code := l.CurlIn(l.StrangerCgroup, "--resolve", appliance.APIHost+":443:"+up,
					"-H", "Authorization: Bearer placeholder", "https://"+appliance.APIHost+"/stranger")
				if code == 0 {
					t.Errorf("the unbound cgroup reached %s: %s", up, out)
				}
			}
			if _, _, code := l.CurlIn(l.StrangerCgroup, "https://"+appliance.APIHost+"/stranger-dns"); code == 0 {
				t.Error("the unbound cgroup resolved and reached the API by name")
			}
			if n := len(l.Received()) - before; n != 0 {
				t.Errorf("the upstream received %d requests from the unbound cgroup", n)
			}
			rows := capPick(l.AuditJSON(t, "--action", "connection"), map[string]string{"reason": "agent_unknown"})
			if len(rows) < 2 {
				t.Errorf("agent_unknown rows: %s; want one per family", capRowsJSON(rows))
			} else {
				t.Logf("unbound cgroup: audit %s", capRowsJSON(rows[:1]))
			}
			// DNS rows are written by the proxy's audit queue: look a few times
			var dns []map[string]any
			for i := 0; i < 50 && len(dns) == 0; i++ {
				if i > 0 {
					time.Sleep(100 * time.Millisecond)
				}
				dns = capPick(l.AuditJSON(t, "--action", "dns.query"), map[string]string{"reason": "unknown_agent"})
			}
			if len(dns) == 0 {
				t.Error("the unbound cgroup's DNS query left no unknown_agent audit row")
			}
		}},
	}
	capRunMatrix(t, r)
}
