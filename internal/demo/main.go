// Command demo is `make demo`: the classic walk-through, offline. It starts a
// real agent-vault server in a temporary directory, a local TLS echo upstream
// playing a public echo API and a small DNS server for its name, configures
// a vault, a credential, a service and an agent through the CLI exactly as an
// operator would, sends one request holding only the placeholder
// "demo token" through the broker, and prints what the upstream received
// (the real value), what the agent received (scrubbed) and the audit rows.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/agentvault/agent-vault/internal/harness"
)

const (
	echoHost    = "echo.demo.test"
	placeholder = "demo token"
	// The demo's "real" credential. It is printed on purpose: the point of
	// the demo is to show it reached the upstream and nothing else.
	realSecret = "sk-demo-7f3a9c1e5b2d4086"
)

func main() {
	bin := flag.String("bin", "bin/agent-vault", "the agent-vault binary")
	keep := flag.Bool("keep", false, "keep the temporary directory")
	flag.Parse()
	if err := run(*bin, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(bin string, keep bool) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "agent-vault-demo-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	}

	step("starting a local TLS echo upstream for https://%s (plays a public echo API) and a DNS server for its name", echoHost)
	ca, err := harness.NewTestCA()
	if err != nil {
		return err
	}
	caFile := filepath.Join(dir, "upstream-ca.pem")
	if err := ca.WritePEM(caFile); err != nil {
		return err
	}
	up, err := harness.StartUpstream(ca, "127.0.0.1:0", echoHost)
	if err != nil {
		return err
	}
	defer up.Close()
	_, port, _ := strings.Cut(up.Addr, ":")
	dnsSrv, err := harness.StartDNS("127.0.0.1:0", map[string][]netip.Addr{echoHost: {netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		return err
	}
	defer dnsSrv.Close()

	srv, err := harness.NewServer(bin, dir)
	if err != nil {
		return err
	}
	srv.Args = []string{"--insecure-no-master-password", "--upstream-dns", dnsSrv.Addr,
		"--upstream-ca", caFile, "--allow-private-upstreams"}
	step("agent-vault server --data-dir %s --insecure-no-master-password --upstream-dns %s --upstream-ca %s --allow-private-upstreams", srv.DataDir, dnsSrv.Addr, caFile)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		return err
	}
	defer srv.Stop()
	fmt.Printf("    admin API + UI on http://%s, explicit proxy on %s\n", srv.AdminAddr, srv.ProxyAddr)

	cli := func(stdin string, args ...string) error {
		fmt.Printf("$ agent-vault %s", strings.Join(args, " "))
		if stdin != "" {
			fmt.Printf("   (value on stdin)")
		}
		fmt.Println()
		out, err := srv.MustCLI(stdin, args...)
		if s := strings.TrimSpace(out); s != "" {
			fmt.Println("  " + strings.ReplaceAll(s, "\n", "\n  "))
		}
		return err
	}
	step("a human sets up the appliance and stores the real credential")
	for _, c := range []struct {
		stdin string
		args  []string
	}{
		{"demo-password-1\n", []string{"setup", "--email", "owner@demo.test"}},
		{"", []string{"vault", "create", "demo"}},
		{realSecret + "\n", []string{"credential", "set", "--vault", "demo", "ECHO_TOKEN"}},
		{"", []string{"service", "add", "--vault", "demo", "--name", "echo", "--host", echoHost,
			"--auth", "placeholder", "--placeholder", placeholder, "--in", "header", "--header", "Authorization",
			"--credential", "ECHO_TOKEN"}},
	} {
		if err := cli(c.stdin, c.args...); err != nil {
			return err
		}
	}
	var agent struct{ Name, Token string }
	fmt.Println("$ agent-vault agent create --vault demo demo-agent --json")
	if err := srv.CLIJSON(&agent, "", "agent", "create", "--vault", "demo", "demo-agent"); err != nil {
		return err
	}
	fmt.Printf("  agent %q created; its token is shown once (%d characters)\n", agent.Name, len(agent.Token))
	caPEM, err := srv.MustCLI("", "ca", "export")
	if err != nil {
		return err
	}

	target := fmt.Sprintf("https://%s:%s/v1/echo?q=hello", echoHost, port)
	step("the agent holds only the placeholder %q and calls %s through the broker", placeholder, target)
	fmt.Printf("$ curl --proxy http://agent:$TOKEN@%s --cacert agent-vault-ca.pem -H 'Authorization: Bearer %s' %s\n", srv.ProxyAddr, placeholder, target)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(caPEM)) {
		return fmt.Errorf("ca export printed no certificate")
	}
	proxyURL := &url.URL{Scheme: "http", User: url.UserPassword("agent", agent.Token), Host: srv.ProxyAddr}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		Proxy: http.ProxyURL(proxyURL), TLSClientConfig: &tls.Config{RootCAs: roots}}}
	req, _ := http.NewRequest("GET", target, nil)
	req.Header.Set("Authorization", "Bearer "+placeholder)
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("request through the broker: %w", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()

	step("what the upstream received")
	got := up.Received()
	if len(got) != 1 {
		return fmt.Errorf("upstream received %d requests, want 1", len(got))
	}
	fmt.Printf("    %s %s  Host: %s\n    Authorization: %s   <- the real credential, injected on the wire\n",
		got[0].Method, got[0].Path, got[0].Host, got[0].Header.Get("Authorization"))

	step("what the agent received (HTTP %d)", resp.StatusCode)
	var echoed map[string]any
	if json.Unmarshal(body, &echoed) == nil {
		if h, ok := echoed["header"].(map[string]any); ok {
			fmt.Printf("    the echo of its Authorization header: %v   <- scrubbed: the agent never sees the secret\n", h["Authorization"])
		}
	} else {
		fmt.Printf("    %s\n", body)
	}
	if strings.Contains(string(body), realSecret) {
		return fmt.Errorf("the agent's response contains the secret")
	}

	step("the audit log")
	// The completion row (status, bytes, duration) is written just after
	// the response streamed: give it a moment to land.
	for i := 0; i < 40; i++ {
		out, err := srv.MustCLI("", "audit", "list", "--action", "request.complete", "--json")
		if err == nil && strings.Contains(out, "request.complete") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cli("", "audit", "list", "--limit", "4"); err != nil {
		return err
	}
	if err := cli("", "audit", "verify"); err != nil {
		return err
	}
	fmt.Println("\nDone: the upstream got the real credential, the agent only ever held the placeholder.")
	return nil
}
