package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/admin/client"
	"github.com/agentvault/agent-vault/internal/harness"
	"github.com/agentvault/agent-vault/internal/testutil/appliance"
)

// loopbackAppliance is the real binary on loopback with the explicit proxy,
// a TLS upstream for api.example.test and a DNS server for its name.
type loopbackAppliance struct {
	srv    *harness.Server
	up     *harness.Upstream
	admin  *client.Client
	roots  *x509.CertPool
	target string // api.example.test:port
}

func startLoopback(t *testing.T) *loopbackAppliance { return startLoopbackWith(t, true) }

// startLoopbackWith starts the appliance, with or without the bearer
// service for api.example.test.
func startLoopbackWith(t *testing.T, withService bool) *loopbackAppliance {
	t.Helper()
	dir := t.TempDir()
	ca, err := harness.NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "upstream-ca.pem")
	if err := ca.WritePEM(caFile); err != nil {
		t.Fatal(err)
	}
	up, err := harness.StartUpstream(ca, "127.0.0.1:0", appliance.APIHost)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	dns, err := harness.StartDNS("127.0.0.1:0", map[string][]netip.Addr{appliance.APIHost: {netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dns.Close)
	srv, err := harness.NewServer(appliance.Binary(t), dir)
	if err != nil {
		t.Fatal(err)
	}
	srv.Env = []string{"AGENT_VAULT_MASTER_PASSWORD=correct horse battery", "AGENT_VAULT_TEST_KDF=fast"}
	srv.Args = []string{"--upstream-dns", dns.Addr, "--upstream-ca", caFile, "--allow-private-upstreams"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Stop()
		appliance.AssertNoSecretAnywhere(t, srv)
		if t.Failed() {
			t.Logf("server log:\n%s", srv.Log())
		}
	})
	c, err := client.New("http://" + srv.AdminAddr)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := c.Setup(ctx, "owner@example.test", "owner-password-1")
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(sess.Token)
	if _, err := c.CreateVault(ctx, appliance.Vault); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetCredential(ctx, appliance.Vault, "API_KEY", []byte(appliance.Secret)); err != nil {
		t.Fatal(err)
	}
	if withService {
		svc := api.Service{Vault: appliance.Vault, Name: "api", Host: appliance.APIHost}
		svc.Auth.Kind, svc.Auth.Credential = "bearer", "API_KEY"
		if _, err := c.AddService(ctx, svc); err != nil {
			t.Fatal(err)
		}
	}
	pem, err := c.CACert(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	_, port, _ := net.SplitHostPort(up.Addr)
	return &loopbackAppliance{srv: srv, up: up, admin: c, roots: roots, target: appliance.APIHost + ":" + port}
}

// tunnel opens an agent connection through the explicit proxy: CONNECT,
// then TLS with the broker's leaf.
func (l *loopbackAppliance) tunnel(t *testing.T, token string) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", l.srv.ProxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	auth := base64.StdEncoding.EncodeToString([]byte("agent:" + token))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", l.target, l.target, auth)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: appliance.APIHost, RootCAs: l.roots, NextProtos: []string{"http/1.1"}})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return tc, bufio.NewReader(tc)
}

// TestRevokeCutsLiveConnections revokes an agent while it holds a
// keep-alive connection, and while it reads a streaming response, and
// measures how long the broker takes to close each: 100 trials of each.
func TestRevokeCutsLiveConnections(t *testing.T) {
	l := startLoopback(t)
	trials := 100
	if testing.Short() {
		trials = 10
	}
	ctx := context.Background()
	var keepalive, streaming []time.Duration
	for i := 0; i < trials; i++ {
		for _, stream := range []bool{false, true} {
			name := fmt.Sprintf("agent-%d-%v", i, stream)
			tok, err := l.admin.CreateAgent(ctx, appliance.Vault, api.AgentCreate{Name: name})
			if err != nil {
				t.Fatal(err)
			}
			conn, br := l.tunnel(t, tok.Token)
			path := "/small"
			if stream {
				path = "/sse?n=1000"
			}
			fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, appliance.APIHost)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("trial %d: first request: %v %v", i, resp, err)
			}
			reader := br // what to read until the broker closes the connection
			if stream {
				body := bufio.NewReader(resp.Body) // de-chunked
				line, err := body.ReadString('\n') // the first event arrived: the stream is live
				if err != nil || !strings.HasPrefix(line, "data:") {
					t.Fatalf("trial %d: no first event: %q %v", i, line, err)
				}
				reader = body
			} else {
				buf := make([]byte, resp.ContentLength)
				if _, err := io.ReadFull(br, buf); err != nil {
					t.Fatal(err)
				}
			}
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			start := time.Now()
			if err := l.admin.RevokeAgent(ctx, name); err != nil {
				t.Fatal(err)
			}
			// Read until the broker closes the connection (an event or two
			// may still be in flight on the stream).
			for {
				if _, err := reader.ReadByte(); err != nil {
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						t.Fatalf("trial %d (stream=%v): connection still open 10 s after revocation", i, stream)
					}
					break
				}
			}
			took := time.Since(start)
			conn.Close()
			if stream {
				streaming = append(streaming, took)
			} else {
				keepalive = append(keepalive, took)
			}
		}
	}
	slices.Sort(keepalive)
	slices.Sort(streaming)
	t.Logf("revocation closed live connections over %d trials each: keep-alive max %v (p50 %v), streaming max %v (p50 %v)",
		trials, keepalive[len(keepalive)-1], keepalive[len(keepalive)/2], streaming[len(streaming)-1], streaming[len(streaming)/2])
	// The revoked agent's token opens nothing new.
	c, err := net.DialTimeout("tcp", l.srv.ProxyAddr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tok, err := l.admin.CreateAgent(ctx, appliance.Vault, api.AgentCreate{Name: "revoked-later"})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.admin.RevokeAgent(ctx, "revoked-later"); err != nil {
		t.Fatal(err)
	}
	auth := base64.StdEncoding.EncodeToString([]byte("agent:" + tok.Token))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: Basic %s\r\n\r\n", l.target, l.target, auth)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "CONNECT"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode == http.StatusOK {
		t.Fatal("a revoked agent's token opened a tunnel")
	}
}
