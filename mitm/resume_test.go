package mitm

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/agentvault/agent-vault/policy"
)

// dialAgentTLS opens a transparent connection as a redirected agent would
// and completes the handshake for sni.
func dialAgentTLS(t *testing.T, e *env, sni string, cache tls.ClientSessionCache) *tls.Conn {
	t.Helper()
	raw, err := net.Dial("tcp", e.transAddr)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, &tls.Config{ServerName: sni, RootCAs: e.caPool, ClientSessionCache: cache, NextProtos: []string{"http/1.1"}})
	if err := c.Handshake(); err != nil {
		raw.Close()
		t.Fatalf("handshake for %s: %v", sni, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestSessionResumptionAcrossConnections: the broker's ticket keys are shared
// by its connections, so an agent resumes; a resumed connection is still
// decided on its own ClientHello and its requests go through the whole
// pipeline (credential injected, intent audited).
func TestSessionResumptionAcrossConnections(t *testing.T) {
	e := newEnv(t)
	cache := tls.NewLRUClientSessionCache(8)
	first := dialAgentTLS(t, e, "api.example.test", cache)
	// TLS 1.3 tickets arrive after the handshake: one request reads them
	if resp := roundTripOn(t, first, "api.example.test"); resp.StatusCode != http.StatusOK {
		t.Fatalf("first connection: status %d", resp.StatusCode)
	}
	first.Close()

	second := dialAgentTLS(t, e, "api.example.test", cache)
	if !second.ConnectionState().DidResume {
		t.Fatal("the second connection did not resume the first one's session")
	}
	before := len(e.sink.find(ActionRequest, "allow"))
	if resp := roundTripOn(t, second, "api.example.test"); resp.StatusCode != http.StatusOK {
		t.Fatalf("resumed connection: status %d", resp.StatusCode)
	}
	if got := len(e.sink.find(ActionRequest, "allow")); got != before+1 {
		t.Fatalf("%d intent rows after the resumed request, want %d", got, before+1)
	}
	last := e.up.received()[len(e.up.received())-1]
	if last.Header.Get("Authorization") != "Bearer "+sentinel {
		t.Fatal("the upstream did not receive the credential on the resumed connection")
	}

	// Revoked agent: a resumed handshake is still decided and its request refused.
	e.setPolicy(func(in *policy.Input) { in.Agents[0].Revoked = true })
	third := dialAgentTLS(t, e, "api.example.test", cache)
	resp := roundTripOn(t, third, "api.example.test")
	expectError(t, resp, http.StatusForbidden, CodeAgentRevoked)
}

// TestLoopbackAgentsUseX25519: agents on the broker's host get classical
// X25519 (see loopbackCurves); the handshake still completes for a client
// offering only the post-quantum hybrid and P-256.
func TestLoopbackAgentsUseX25519(t *testing.T) {
	e := newEnv(t)
	c := dialAgentTLS(t, e, "api.example.test", nil)
	if got := c.ConnectionState().CurveID; got != tls.X25519 {
		t.Fatalf("key exchange %v on a loopback agent connection, want X25519", got)
	}
	raw, err := net.Dial("tcp", e.transAddr)
	if err != nil {
		t.Fatal(err)
	}
	pq := tls.Client(raw, &tls.Config{ServerName: "api.example.test", RootCAs: e.caPool,
		CurvePreferences: []tls.CurveID{tls.X25519MLKEM768, tls.CurveP256}})
	defer pq.Close()
	if err := pq.Handshake(); err != nil {
		t.Fatalf("handshake offering X25519MLKEM768 and P-256: %v", err)
	}
	if got := pq.ConnectionState().CurveID; got != tls.CurveP256 {
		t.Fatalf("key exchange %v, want P-256", got)
	}
}

// roundTripOn sends one GET on an established agent connection.
func roundTripOn(t *testing.T, c *tls.Conn, host string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", "https://"+host+"/echo", nil)
	req.Header.Set("Authorization", "Bearer "+placeholder)
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp
}
