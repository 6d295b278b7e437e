package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/harness"
	"github.com/agentvault/agent-vault/internal/testutil/appliance"
	"github.com/agentvault/agent-vault/internal/testutil/netns"
)

// TestRunCommand holds `agent-vault run` in both modes against the local
// appliance: curl with no proxy settings in a fresh cgroup (local), curl
// through HTTPS_PROXY with a short-lived token (proxy); the agent and the
// cgroup are gone afterwards and CMD's exit code is run's. `doctor` runs
// there too, with the server up.
func TestRunCommand(t *testing.T) {
	l := appliance.StartLocal(t)
	agents := func(t *testing.T) string {
		return l.CLI(t, "", "agent", "list", "--json")
	}
	curlAPI := func(path string) string {
		return `curl -sS --max-time 10 -H "Authorization: Bearer placeholder" https://` + appliance.APIHost + path
	}

	t.Run("local", func(t *testing.T) {
		const name = "run-local-1"
		script := `env | grep -ic _proxy; env | grep -c '^AGENT_VAULT_TOKEN='; echo "ca=$SSL_CERT_FILE"; grep '^0::' /proc/self/cgroup; ` + curlAPI("/run-local")
		r := l.Srv.CLI("", nil, "run", "--vault", appliance.Vault, "--agent", name, "--mode", "local",
			"--agents-cgroup", l.AgentsCgroup, "--", "sh", "-c", script)
		if r.Code != 0 {
			t.Fatalf("run --mode local: exit %d: %s\n%s", r.Code, r.Stderr, r.Stdout)
		}
		lines := strings.Split(r.Stdout, "\n")
		if len(lines) < 5 || lines[0] != "0" || lines[1] != "0" || !strings.HasPrefix(lines[2], "ca=/") ||
			!strings.HasSuffix(lines[3], strings.TrimPrefix(l.AgentsCgroup, l.CgroupMount)+"/"+name) {
			t.Errorf("the command's view (proxy vars, operator token, CA file, cgroup, response):\n%s", r.Stdout)
		}
		capSecretFree(t, "run's output", r.Stdout+r.Stderr)
		got := capReceivedAtLocal(l, "/run-local")
		if len(got) != 1 || got[0].Header.Get("Authorization") != "Bearer "+appliance.Secret {
			t.Fatalf("the upstream received %+v", got)
		}
		rows := capPick(l.AuditJSON(t, "--agent", name), map[string]string{"action": "request", "path": "/run-local", "decision": "allow"})
		if len(rows) != 1 {
			t.Errorf("audit rows of %s: %s", name, capRowsJSON(rows))
		}
		if strings.Contains(agents(t), name) {
			t.Errorf("the agent %s outlived run", name)
		}
		if _, err := os.Stat(filepath.Join(l.AgentsCgroup, name)); !os.IsNotExist(err) {
			t.Errorf("the cgroup of run is left behind (%v)", err)
		}
		t.Logf("run --mode local: client got %q…; upstream saw the credential; audit %s", firstLine(lines[4]), capRowsJSON(rows))
	})

	t.Run("local exit code", func(t *testing.T) {
		r := l.Srv.CLI("", nil, "run", "--vault", appliance.Vault, "--agent", "run-exit-7", "--mode", "local",
			"--agents-cgroup", l.AgentsCgroup, "--", "sh", "-c", "exit 7")
		if r.Code != 7 {
			t.Errorf("run -- sh -c 'exit 7': exit %d: %s", r.Code, r.Stderr)
		}
		if strings.Contains(agents(t), "run-exit-7") {
			t.Error("the agent outlived run")
		}
	})

	t.Run("proxy", func(t *testing.T) {
		const name = "run-proxy-1"
		script := `echo "$HTTPS_PROXY" | sed 's/:[^:@]*@/:TOKEN@/'; echo "ca=$CURL_CA_BUNDLE"; ` + curlAPI("/run-proxy")
		r := l.Srv.CLI("", nil, "run", "--vault", appliance.Vault, "--agent", name, "--mode", "proxy", "--", "sh", "-c", script)
		if r.Code != 0 {
			t.Fatalf("run --mode proxy: exit %d: %s\n%s", r.Code, r.Stderr, r.Stdout)
		}
		lines := strings.Split(r.Stdout, "\n")
		if len(lines) < 3 || lines[0] != "http://agent:TOKEN@127.0.0.1:14322" || !strings.HasPrefix(lines[1], "ca=/") {
			t.Errorf("the command's view (proxy URL, CA file, response):\n%s", r.Stdout)
		}
		capSecretFree(t, "run's output", r.Stdout+r.Stderr)
		got := capReceivedAtLocal(l, "/run-proxy")
		if len(got) != 1 || got[0].Header.Get("Authorization") != "Bearer "+appliance.Secret {
			t.Fatalf("the upstream received %+v", got)
		}
		rows := capPick(l.AuditJSON(t, "--agent", name), map[string]string{"action": "request", "path": "/run-proxy", "decision": "allow"})
		if len(rows) != 1 {
			t.Errorf("audit rows of %s: %s", name, capRowsJSON(rows))
		}
		if strings.Contains(agents(t), name) {
			t.Errorf("the agent %s outlived run", name)
		}
	})

	t.Run("local without capture on the cgroup", func(t *testing.T) {
		dir := filepath.Join(l.CgroupMount, netns.UniqueName("cg"))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { appliance.RemoveCgroupTree(dir) })
		r := l.Srv.CLI("", nil, "run", "--vault", appliance.Vault, "--mode", "local", "--agents-cgroup", dir, "--", "true")
		if r.Code != 1 || !strings.Contains(r.Stderr, "no agent-vault capture is attached") || !strings.Contains(r.Stderr, "--mode proxy") {
			t.Errorf("run in a cgroup nothing captures: exit %d: %s", r.Code, r.Stderr)
		}
	})

	t.Run("local without root", func(t *testing.T) {
		bin := publicCopy(t, l.Srv.Bin)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "run", "--mode", "local", "--", "true")
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/nonexistent"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "needs root") ||
			!strings.Contains(string(out), "--mode proxy") {
			t.Errorf("run --mode local as nobody: exit %d (%v): %s", code, err, out)
		}
	})

	t.Run("doctor with the server up", func(t *testing.T) {
		r := l.Srv.CLI("", nil, "doctor", "--json")
		var rep struct {
			OK     bool `json:"ok"`
			Checks []struct {
				Name   string `json:"name"`
				OK     bool   `json:"ok"`
				Detail string `json:"detail"`
			} `json:"checks"`
		}
		if err := json.Unmarshal([]byte(r.Stdout), &rep); err != nil || r.Code != 0 || !rep.OK {
			t.Fatalf("doctor --json: exit %d: %v\n%s%s", r.Code, err, r.Stdout, r.Stderr)
		}
		seen := map[string]string{}
		for _, c := range rep.Checks {
			seen[c.Name] = c.Detail
		}
		if !strings.Contains(seen["admin port"], "running agent-vault server") || !strings.Contains(seen["CA trust"], "does not hold") {
			t.Errorf("doctor with the server up: %v", seen)
		}
	})
}

// TestDoctor runs `agent-vault doctor` in a fresh namespace: gateway mode
// needs forwarding (exit 1 and a MISSING line until it is on).
func TestDoctor(t *testing.T) {
	netns.RequirePrivileged(t, "ip", "nsenter", "iptables", "ip6tables")
	bin := appliance.Binary(t)
	ns := netns.New(t, "doctor")
	run := func(args ...string) (string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := ns.Command(ctx, bin, append([]string{"doctor"}, args...)...)
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}
	out, code := run("--redirect", "gateway")
	if code != 1 || !strings.Contains(out, "MISSING") || !strings.Contains(out, "sysctl -w net.ipv4.ip_forward=1") {
		t.Errorf("doctor --redirect gateway without forwarding: exit %d:\n%s", code, out)
	}
	if err := ns.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if out, code := run("--redirect", "gateway"); code != 0 {
		t.Errorf("doctor --redirect gateway with forwarding: exit %d:\n%s", code, out)
	}
	out, code = run("--redirect", "local")
	for _, want := range []string{"OK  cgroup v2", "capture programs load", "backend "} {
		if code != 0 || !strings.Contains(strings.Join(strings.Fields(out), "  "), strings.Join(strings.Fields(want), "  ")) {
			t.Errorf("doctor --redirect local: exit %d, want %q in:\n%s", code, want, out)
		}
	}
	t.Logf("doctor:\n%s", out)
}

// publicCopy copies the binary into a directory anyone may read, for a run
// as an unprivileged user.
func publicCopy(t *testing.T, bin string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "agent-vault-pub-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "agent-vault")
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 60 {
		s = s[:60]
	}
	return s
}

func capReceivedAtLocal(l *appliance.Local, path string) []harness.Received {
	var out []harness.Received
	for _, rc := range l.Received() {
		if rc.Path == path {
			out = append(out, rc)
		}
	}
	return out
}
