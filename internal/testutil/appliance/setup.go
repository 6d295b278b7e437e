package appliance

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/harness"
	"github.com/agentvault/agent-vault/internal/testutil/netns"
)

// Internet is the fake internet behind the appliance, the same in both
// modes: the API upstreams (TLS signed by UpCA), the authoritative DNS
// server and the canary.
type Internet struct {
	UpCA       *harness.TestCA
	API4, API6 *harness.Upstream // api.example.test on 10.77.2.2:443 and [fd77:2::2]:443
	DNS        *harness.DNSServer
	Canary     *Canary

	dnsAddr  string // the DNS server, for --upstream-dns
	upCAFile string // UpCA in PEM, for --upstream-ca
}

// Received is what either API upstream (v4 or v6) received.
func (in *Internet) Received() []harness.Received {
	return append(in.API4.Received(), in.API6.Received()...)
}

// startInternet starts the fake internet in ns, whose own addresses are v4
// and v6: the upstreams on port 443 of both, the DNS server on v4:53 (api and
// other resolve to v4 and v6, canary to the canary's addresses) and the
// canary. It writes UpCA into dir and closes it all in t.Cleanup.
func startInternet(t *testing.T, ns *netns.NS, v4, v6 netip.Addr, dir string) Internet {
	t.Helper()
	in := Internet{dnsAddr: netip.AddrPortFrom(v4, 53).String(), upCAFile: filepath.Join(dir, "upstream-ca.pem")}
	var err error
	if in.UpCA, err = harness.NewTestCA(); err != nil {
		t.Fatal(err)
	}
	if err := in.UpCA.WritePEM(in.upCAFile); err != nil {
		t.Fatal(err)
	}
	err = ns.Do(func() error {
		var err error
		if in.API4, err = harness.StartUpstream(in.UpCA, netip.AddrPortFrom(v4, 443).String(), APIHost, OtherHost); err != nil {
			return err
		}
		if in.API6, err = harness.StartUpstream(in.UpCA, netip.AddrPortFrom(v6, 443).String(), APIHost, OtherHost); err != nil {
			return err
		}
		records := map[string][]netip.Addr{
			APIHost:    {v4, v6},
			OtherHost:  {v4, v6},
			CanaryHost: {CanaryV4, CanaryV6},
		}
		if in.DNS, err = harness.StartDNS(in.dnsAddr, records); err != nil {
			return err
		}
		in.Canary, err = StartCanary(CanaryV4, CanaryV6)
		return err
	})
	if err != nil {
		t.Fatalf("fake internet: %v", err)
	}
	t.Cleanup(func() {
		for _, u := range []*harness.Upstream{in.API4, in.API6} {
			if u != nil {
				u.Close()
			}
		}
		if in.DNS != nil {
			in.DNS.Close()
		}
		if in.Canary != nil {
			in.Canary.Close()
		}
	})
	return in
}

// newServer prepares (does not start) the appliance in ns: the fixed ports,
// the test's master password, modeArgs (the capture mode), the fake
// internet as upstream (its DNS server and CA), then extraArgs.
func newServer(t *testing.T, bin, dir string, ns *netns.NS, in *Internet, modeArgs, extraArgs []string) *harness.Server {
	t.Helper()
	srv, err := harness.NewServer(bin, dir)
	if err != nil {
		t.Fatal(err)
	}
	srv.AdminAddr, srv.ProxyAddr, srv.Transparent, srv.DNSAddr = "127.0.0.1:14321", "127.0.0.1:14322", ":14323", ":14353"
	srv.Wrap = []string{"nsenter", "--net=" + ns.Path, "--"}
	srv.InNS = ns.Do
	srv.Env = []string{"AGENT_VAULT_MASTER_PASSWORD=correct horse battery", "AGENT_VAULT_TEST_KDF=fast"}
	srv.Args = slices.Concat(modeArgs, []string{"--upstream-dns", in.dnsAddr, "--upstream-ca", in.upCAFile,
		"--allow-private-upstreams"}, extraArgs)
	return srv
}

// startServer starts (or restarts) srv and waits until it is ready.
func startServer(srv *harness.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	return srv.Start(ctx)
}

// stopAtCleanup stops srv when the test ends, checks that the sentinel
// secret is nowhere in its log or data dir, prints its log if the test
// failed, then runs after (if not nil).
func stopAtCleanup(t *testing.T, srv *harness.Server, after func()) {
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Logf("server stop: %v", err)
		}
		AssertNoSecretAnywhere(t, srv)
		if t.Failed() {
			t.Logf("server log:\n%s", srv.Log())
		}
		if after != nil {
			after()
		}
	})
}

// configure sets the running appliance up through its CLI: the owner, Vault
// with the credential API_KEY (Secret), the bearer service for APIHost, and
// Agent bound by agentArgs (--source or --cgroup flags); it exports the
// broker's CA into dir and returns the file. Then it gives the agents'
// namespace (nsName) a resolv.conf naming Resolver, an address that exists
// nowhere (`ip netns exec` bind-mounts it for the agents' commands).
func configure(t *testing.T, srv *harness.Server, dir, nsName string, agentArgs ...string) (brokerCAFile string) {
	t.Helper()
	cli(t, srv, "owner-password-1\n", "setup", "--email", "owner@example.test")
	cli(t, srv, "", "vault", "create", Vault)
	cli(t, srv, Secret+"\n", "credential", "set", "--vault", Vault, "API_KEY")
	cli(t, srv, "", "service", "add", "--vault", Vault, "--name", "api", "--host", APIHost,
		"--auth", "bearer", "--credential", "API_KEY")
	cli(t, srv, "", append([]string{"agent", "create", "--vault", Vault, Agent}, agentArgs...)...)
	brokerCAFile = filepath.Join(dir, "agent-vault-ca.pem")
	cli(t, srv, "", "ca", "export", "-o", brokerCAFile)

	etc := filepath.Join("/etc/netns", nsName)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver "+Resolver+"\noptions timeout:2 attempts:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return brokerCAFile
}

// cli runs the agent-vault CLI where srv runs, failing the test unless it
// exits 0, and returns its stdout.
func cli(t *testing.T, srv *harness.Server, stdin string, args ...string) string {
	t.Helper()
	out, err := srv.MustCLI(stdin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
