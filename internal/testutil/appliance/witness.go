package appliance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/harness"
	"github.com/agentvault/agent-vault/internal/testutil/netns"
)

// Witnesses: what tests read after an agent tried something, besides the
// client's own outcome and the canary's counters. The audit log is the L7
// witness; the packet counters of the appliance's AV-* iptables rules are
// the kernel witness for what is dropped before any listener sees it.

// Run runs a command as the agent (AgentCommand) with a deadline and
// returns its combined output and exit code (-1 when it could not start or
// was killed at the deadline).
func (g *Gateway) Run(timeout time.Duration, name string, args ...string) (out string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return runCombined(g.AgentCommand(ctx, name, args...))
}

func runCombined(cmd *exec.Cmd) (string, int) {
	b, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(b), 0
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return string(b), ee.ExitCode()
	default:
		return string(b) + err.Error(), -1
	}
}

// Run runs a command as the agent (AgentCommand: in the agent's cgroup)
// with a deadline and returns its combined output and exit code.
func (l *Local) Run(timeout time.Duration, name string, args ...string) (out string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return runCombined(l.AgentCommand(ctx, name, args...))
}

// SetAgentResolvConf replaces the agent's resolv.conf (what `ip netns exec`
// bind-mounts for the next AgentCommand); restore it with the returned
// function.
func (g *Gateway) SetAgentResolvConf(t testing.TB, content string) (restore func()) {
	return setResolvConf(t, g.Topo.Agent.Name, content)
}

// SetAgentResolvConf is Gateway.SetAgentResolvConf for local mode (the
// resolv.conf of the appliance's namespace, where the agents run).
func (l *Local) SetAgentResolvConf(t testing.TB, content string) (restore func()) {
	return setResolvConf(t, l.NS.Name, content)
}

func setResolvConf(t testing.TB, nsName, content string) (restore func()) {
	t.Helper()
	path := filepath.Join("/etc/netns", nsName, "resolv.conf")
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := os.WriteFile(path, old, 0o644); err != nil {
			t.Errorf("restore resolv.conf: %v", err)
		}
	}
}

// RuleCounters returns the packet counter of every rule of an AV-* chain
// in ns, both families, keyed "ip4|-A AV-FORWARD -i agent0 ... -j DROP"
// (iptables-save -c syntax; "ip6|..." for ip6tables).
func RuleCounters(ns *netns.NS) (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, fam := range []struct{ tag, bin string }{{"ip4", "iptables-save"}, {"ip6", "ip6tables-save"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		b, err := ns.Command(ctx, fam.bin, "-c").CombinedOutput()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%s in %s: %w: %s", fam.bin, ns.Name, err, b)
		}
		for _, line := range strings.Split(string(b), "\n") {
			// [pkts:bytes] -A AV-CHAIN spec...
			if !strings.HasPrefix(line, "[") || !strings.Contains(line, "-A AV-") {
				continue
			}
			end := strings.Index(line, "]")
			pkts, _, ok := strings.Cut(line[1:max(end, 1)], ":")
			if end < 0 || !ok {
				continue
			}
			n, err := strconv.ParseUint(pkts, 10, 64)
			if err != nil {
				continue
			}
			out[fam.tag+"|"+strings.TrimSpace(line[end+1:])] += n
		}
	}
	return out, nil
}

// RuleCounters is RuleCounters of the gateway namespace.
func (g *Gateway) RuleCounters(t testing.TB) map[string]uint64 {
	t.Helper()
	c, err := RuleCounters(g.Topo.GW)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// AuditRow is the part of an audit row tests look at.
type AuditRow struct {
	Seq      uint64
	Action   string
	Actor    string // kind:name
	Decision string
	Reason   string
	Host     string
	Method   string // the query type for dns.query rows
	Path     string
	Target   string
}

func (r AuditRow) String() string {
	return fmt.Sprintf("#%d %s %s %s/%s host=%s method=%s path=%s target=%s",
		r.Seq, r.Actor, r.Action, r.Decision, r.Reason, r.Host, r.Method, r.Path, r.Target)
}

// AuditRowsAfter returns the audit rows of srv with a sequence number above
// seq, oldest first (at most the newest 1000 rows are read).
func AuditRowsAfter(srv *harness.Server, seq uint64) ([]AuditRow, error) {
	var page struct {
		Events []struct {
			Seq   uint64 `json:"seq"`
			Actor struct {
				Kind string `json:"kind"`
				Name string `json:"name"`
			} `json:"actor"`
			Action   string `json:"action"`
			Decision string `json:"decision"`
			Reason   string `json:"reason"`
			Host     string `json:"host"`
			Method   string `json:"method"`
			Path     string `json:"path"`
			Target   string `json:"target"`
		} `json:"events"`
	}
	if err := srv.CLIJSON(&page, "", "audit", "list", "--limit", "1000"); err != nil {
		return nil, fmt.Errorf("audit list: %w", err)
	}
	var rows []AuditRow
	for i := len(page.Events) - 1; i >= 0; i-- {
		e := page.Events[i]
		if e.Seq <= seq {
			continue
		}
		rows = append(rows, AuditRow{Seq: e.Seq, Action: e.Action, Actor: e.Actor.Kind + ":" + e.Actor.Name,
			Decision: e.Decision, Reason: e.Reason, Host: e.Host, Method: e.Method, Path: e.Path, Target: e.Target})
	}
	return rows, nil
}

// AuditLastSeq is the sequence number of srv's newest audit row.
func AuditLastSeq(srv *harness.Server) (uint64, error) {
	rows, err := AuditRowsAfter(srv, 0)
	if err != nil || len(rows) == 0 {
		return 0, err
	}
	return rows[len(rows)-1].Seq, nil
}

// WaitAudit polls srv's audit rows above seq until match accepts one (DNS
// denials are committed in the background) or about 5 s have passed; it
// returns the matching row, or ok false and every row seen.
func WaitAudit(srv *harness.Server, seq uint64, match func(AuditRow) bool) (row AuditRow, seen []AuditRow, ok bool, err error) {
	for i := 0; i < 50; i++ {
		if seen, err = AuditRowsAfter(srv, seq); err != nil {
			return AuditRow{}, nil, false, err
		}
		for _, r := range seen {
			if match(r) {
				return r, seen, true, nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return AuditRow{}, seen, false, nil
}
