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
	Topo         *netns.Topology
	Srv          *harness.Server
	UpCA         *harness.TestCA
	API4, API6   *harness.Upstream // api.example.test on 10.77.2.2:443 and [fd77:2::2]:443
	DNS          *harness.DNSServer
	Canary       *Canary
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
	var err error
	if g.UpCA, err = harness.NewTestCA(); err != nil {
		t.Fatal(err)
	}
	upCAFile := filepath.Join(g.Dir, "upstream-ca.pem")
	if err := g.UpCA.WritePEM(upCAFile); err != nil {
		t.Fatal(err)
	}
	err = topo.Net.Do(func() error {
		var err error
		if g.API4, err = harness.StartUpstream(g.UpCA, netip.AddrPortFrom(topo.NetV4, 443).String(), APIHost, OtherHost); err != nil {
			return err
		}
		if g.API6, err = harness.StartUpstream(g.UpCA, netip.AddrPortFrom(topo.NetV6, 443).String(), APIHost, OtherHost); err != nil {
			return err
		}
		records := map[string][]netip.Addr{
			APIHost:    {topo.NetV4, topo.NetV6},
			OtherHost:  {topo.NetV4, topo.NetV6},
			CanaryHost: {CanaryV4, CanaryV6},
		}
		if g.DNS, err = harness.StartDNS(netip.AddrPortFrom(topo.NetV4, 53).String(), records); err != nil {
			return err
		}
		g.Canary, err = StartCanary(CanaryV4, CanaryV6)
		return err
	})
	if err != nil {
		t.Fatalf("fake internet: %v", err)
	}
	t.Cleanup(func() {
		g.API4.Close()
		g.API6.Close()
		g.DNS.Close()
		g.Canary.Close()
	})

	g.Srv, err = harness.NewServer(bin, g.Dir)
	if err != nil {
		t.Fatal(err)
	}
	g.Srv.AdminAddr, g.Srv.ProxyAddr, g.Srv.Transparent, g.Srv.DNSAddr = "127.0.0.1:14321", "127.0.0.1:14322", ":14323", ":14353"
	g.Srv.Wrap = []string{"nsenter", "--net=" + topo.GW.Path, "--"}
	g.Srv.InNS = topo.GW.Do
	g.Srv.Env = []string{"AGENT_VAULT_MASTER_PASSWORD=correct horse battery", "AGENT_VAULT_TEST_KDF=fast"}
	g.Srv.Args = append([]string{"--redirect", "gateway", "--gateway-iface", topo.GWAgentIface,
		"--upstream-dns", netip.AddrPortFrom(topo.NetV4, 53).String(), "--upstream-ca", upCAFile,
		"--allow-private-upstreams"}, extraArgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := g.Srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Srv.Stop(); err != nil {
			t.Logf("server stop: %v", err)
		}
		assertNoSecretAnywhere(t, g.Srv)
		if t.Failed() {
			t.Logf("server log:\n%s", g.Srv.Log())
		}
	})
	g.mustCLI(t, "owner-password-1\n", "setup", "--email", "owner@example.test")
	g.mustCLI(t, "", "vault", "create", Vault)
	g.mustCLI(t, Secret+"\n", "credential", "set", "--vault", Vault, "API_KEY")
	g.mustCLI(t, "", "service", "add", "--vault", Vault, "--name", "api", "--host", APIHost,
		"--auth", "bearer", "--credential", "API_KEY")
	g.mustCLI(t, "", "agent", "create", "--vault", Vault, Agent,
		"--source", topo.AgentV4.String()+"/32", "--source", topo.AgentV6.String()+"/128")
	g.BrokerCAFile = filepath.Join(g.Dir, "agent-vault-ca.pem")
	g.mustCLI(t, "", "ca", "export", "-o", g.BrokerCAFile)

	// the agent's resolv.conf names a resolver that exists nowhere
	etc := filepath.Join("/etc/netns", topo.Agent.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver "+Resolver+"\noptions timeout:2 attempts:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *Gateway) mustCLI(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := g.Srv.MustCLI(stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// CLI runs the agent-vault CLI in the gateway namespace.
func (g *Gateway) CLI(t *testing.T, stdin string, args ...string) string {
	return g.mustCLI(t, stdin, args...)
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
	cmd := g.AgentCommand(ctx, "curl", full...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		e.WriteString(err.Error())
	}
	return o.String(), e.String(), code
}

// AuditJSON returns `audit list --json` rows (newest first) with extra flags.
func (g *Gateway) AuditJSON(t *testing.T, args ...string) []map[string]any {
	t.Helper()
	var rows struct {
		Rows []map[string]any `json:"rows"`
	}
	var raw any
	if err := g.Srv.CLIJSON(&raw, "", append([]string{"audit", "list", "--limit", "1000"}, args...)...); err != nil {
		t.Fatal(err)
	}
	switch v := raw.(type) {
	case []any:
		for _, r := range v {
			if m, ok := r.(map[string]any); ok {
				rows.Rows = append(rows.Rows, m)
			}
		}
	case map[string]any:
		for _, key := range []string{"rows", "events", "items"} {
			if list, ok := v[key].([]any); ok {
				for _, r := range list {
					if m, ok := r.(map[string]any); ok {
						rows.Rows = append(rows.Rows, m)
					}
				}
			}
		}
	default:
		t.Fatalf("audit list --json printed %T", raw)
	}
	return rows.Rows
}

// String describes the gateway for failure messages.
func (g *Gateway) String() string {
	return fmt.Sprintf("gateway %s (agent %s, net %s)", g.Topo.GW.Name, g.Topo.Agent.Name, g.Topo.Net.Name)
}

// Received is what either API upstream (v4 or v6) received.
func (g *Gateway) Received() []harness.Received {
	return append(g.API4.Received(), g.API6.Received()...)
}
