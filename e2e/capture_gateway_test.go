package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/testutil/appliance"
)

// TestCaptureGateway holds gateway mode (iptables, shape G) against the
// matrix with real clients that have no proxy settings, v4 and v6.
func TestCaptureGateway(t *testing.T) {
	g := appliance.StartGateway(t)
	topo := g.Topo
	agentSource := func(t *testing.T) []string {
		return []string{"--source", topo.AgentV4.String() + "/32", "--source", topo.AgentV6.String() + "/128"}
	}
	r := &capRig{
		mode: "gateway", srv: g.Srv, ns: topo.GW, canary: g.Canary, received: g.Received,
		curl: g.Curl, agentCmd: g.AgentCommand, audit: g.AuditJSON, cli: g.CLI, caFile: g.BrokerCAFile,
		brokerV4: topo.GWNetV4, brokerV6: topo.GWNetV6,
		blockedTCP:    []string{"timeout"}, // FORWARD drops
		blockedUDP443: []string{"refused"}, // icmp port unreachable: QUIC falls back at once
		adminTargets: []string{"tcp://" + capAp(topo.GWAgentV4, 14321), "tcp://" + capAp(topo.GWAgentV4, 14322),
			"tcp://" + capAp(topo.GWNetV4, 14321), "tcp://" + capAp(topo.GWAgentV6, 14321)},
		restart: func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			if err := g.Srv.Start(ctx); err != nil {
				t.Fatal(err)
			}
		},
	}
	r.recreate = func(t *testing.T) {
		g.CLI(t, "", "agent", "delete", appliance.Agent)
		g.CLI(t, "", append([]string{"agent", "create", "--vault", appliance.Vault, appliance.Agent}, agentSource(t)...)...)
	}
	r.extra = []capCheck{{"unknown source address", func(t *testing.T) {
		// a second address on the agent's link, bound to no agent
		const mac = "02:77:01:00:00:02" // the agent's veth (netns topology)
		for _, a := range []struct{ p, ip string }{{"10.77.1.3/24", "10.77.1.3"}, {"fd77:1::3/64", "fd77:1::3"}} {
			args := []string{"addr", "add", a.p, "dev", topo.AgentIface}
			if a.ip == "fd77:1::3" {
				args = append(args, "nodad")
			}
			topo.Agent.MustIP(t, args...)
			defer topo.Agent.MustIP(t, "addr", "del", a.p, "dev", topo.AgentIface)
			topo.GW.MustIP(t, "neigh", "replace", a.ip, "lladdr", mac, "dev", topo.GWAgentIface, "nud", "permanent")
		}
		before := len(g.Received())
		for _, c := range []struct{ src, up string }{{"10.77.1.3", capUpV4.String()}, {"fd77:1::3", "[" + capUpV6.String() + "]"}} {
			out, _, code := g.Curl("--interface", c.src, "--resolve", appliance.APIHost+":443:"+c.up,
				"-H", "Authorization: Bearer placeholder", "https://"+appliance.APIHost+"/unknown")
			if code == 0 {
				t.Errorf("from %s (no agent): curl succeeded: %s", c.src, out)
			}
			rows := capPick(g.AuditJSON(t, "--action", "connection"), map[string]string{"reason": "agent_unknown", "target": c.src})
			if len(rows) == 0 {
				t.Errorf("no agent_unknown row for %s", c.src)
			} else {
				t.Logf("unknown source %s: curl exit %d; audit %s", c.src, code, capRowsJSON(rows[:1]))
			}
		}
		if n := len(g.Received()) - before; n != 0 {
			t.Errorf("the upstream received %d requests from an unknown source", n)
		}
	}}}
	capRunMatrix(t, r)
}
