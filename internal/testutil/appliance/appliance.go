// Package appliance runs the real agent-vault binary as a gateway in the
// three-namespace topology of TESTING.md (StartGateway), or in local mode
// with the agents as processes in cgroups of the broker's own namespace
// (StartLocal, local.go), with a fake internet behind it
// (TLS upstreams signed by a test CA, an authoritative DNS server, a canary
// that counts every byte it receives), so privileged end-to-end tests can
// hold the product against the matrix with real clients that have no proxy
// settings. Test-only; it imports harness and netns, nothing of the product.
package appliance

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/harness"
	"github.com/agentvault/agent-vault/internal/testutil/netns"
)

// Names and addresses of the fake internet.
const (
	APIHost    = "api.example.test"            // has a service (bearer, credential API_KEY)
	OtherHost  = "other.example.test"          // resolves upstream, but no service
	CanaryHost = "canary.example.test"         // resolves to the canary, no service
	Secret     = "sk-live-SENTINEL-7c1f0e9d2b" // the real credential: must only ever reach the upstream
	Agent      = "agent-1"
	Vault      = "prod"
	// Resolver is what the agent's resolv.conf names: an address that
	// exists nowhere (inside the test's own private range).
	Resolver = "10.77.3.53"
)

var (
	CanaryV4 = netip.MustParseAddr("10.77.2.9")
	CanaryV6 = netip.MustParseAddr("fd77:2::9")
)

// Gateway is a running appliance in gateway mode and its surroundings.
type Gateway struct {
	Topo *netns.Topology
	Internet
	Srv          *harness.Server
	BrokerCAFile string // the appliance's root, trusted by the agent's clients
	Dir          string
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds ./cmd/agent-vault once per test process, or returns
// $AGENT_VAULT_TEST_BIN when set (a binary built beforehand).
func Binary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("AGENT_VAULT_TEST_BIN"); bin != "" {
		return bin
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "agent-vault-bin-")
		if err != nil {
			buildErr = err
			return
		}
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		binPath, buildErr = harness.BuildBinary(root, dir)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// RemoveBinary deletes the built binary (call from TestMain).
func RemoveBinary() {
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// StartGateway builds the topology, the fake internet and the appliance
// (--redirect gateway on the agents' interface), configures a vault with one
// bearer service for api.example.test and an agent bound to the agent
// namespace's addresses, and tears it all down in t.Cleanup.
func StartGateway(t *testing.T, extraArgs ...string) *Gateway {
	t.Helper()
	netns.RequirePrivileged(t, "ip", "nsenter", "iptables", "ip6tables", "curl")
	bin := Binary(t)
	topo := netns.NewTopology(t, CanaryV4, CanaryV6)
	g := &Gateway{Topo: topo, Dir: t.TempDir()}
	g.Internet = startInternet(t, topo.Net, topo.NetV4, topo.NetV6, g.Dir)
	g.Srv = newServer(t, bin, g.Dir, topo.GW, &g.Internet,
		[]string{"--redirect", "gateway", "--gateway-iface", topo.GWAgentIface}, extraArgs)
	if err := startServer(g.Srv); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, g.Srv, nil)
	g.BrokerCAFile = configure(t, g.Srv, g.Dir, topo.Agent.Name,
		"--source", topo.AgentV4.String()+"/32", "--source", topo.AgentV6.String()+"/128")
	return g
}

// CLI runs the agent-vault CLI in the gateway namespace.
func (g *Gateway) CLI(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	return cli(t, g.Srv, stdin, args...)
}

// AgentCommand runs a command as the agent: in the agent namespace, with its
// own resolv.conf (ip netns exec bind-mounts it), no proxy variables.
func (g *Gateway) AgentCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", g.Topo.Agent.Name, name}, args...)...)
	cmd.Env = netns.CleanEnv()
	return cmd
}

// Curl runs curl as the agent, trusting only the appliance's CA, and returns
// its stdout, stderr and exit code.
func (g *Gateway) Curl(args ...string) (stdout, stderr string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"-sS", "--max-time", "10", "--cacert", g.BrokerCAFile}, args...)
	return runCmd(g.AgentCommand(ctx, "curl", full...))
}

// AuditJSON returns `audit list --json` rows (newest first) with extra flags.
func (g *Gateway) AuditJSON(t *testing.T, args ...string) []map[string]any {
	t.Helper()
	return auditRows(t, g.Srv, args...)
}

// String describes the gateway for failure messages.
func (g *Gateway) String() string {
	return fmt.Sprintf("gateway %s (agent %s, net %s)", g.Topo.GW.Name, g.Topo.Agent.Name, g.Topo.Net.Name)
}
