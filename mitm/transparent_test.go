package mitm

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/harness"
	"github.com/agentvault/agent-vault/policy"
)

func (e *env) connDenies(reason string) int {
	n := 0
	for _, ev := range e.sink.find(ActionConnection, "deny") {
		if ev.Reason == reason {
			n++
		}
	}
	return n
}

func TestOriginalDestinationMustBelongToTheName(t *testing.T) {
	e := newEnv(t)
	e.origin.Store(&Origin{OriginalDst: netip.MustParseAddrPort(fmt.Sprintf("127.0.0.2:%d", e.up.port))})
	_, err := tls.Dial("tcp", e.transAddr, &tls.Config{ServerName: "api.example.test", RootCAs: e.caPool})
	if err == nil {
		t.Fatal("handshake succeeded for a destination the name does not resolve to")
	}
	if e.connDenies("destination_not_resolved") != 1 {
		t.Fatalf("audit rows %+v", e.sink.all())
	}
	if len(e.up.received()) != 0 {
		t.Fatal("upstream received a request")
	}
}

// DestinationAllowed (the DNS proxy's pins) can vouch for an address the
// broker's own resolution does not return, and the broker then dials
// exactly that address.
func TestDestinationAllowedPins(t *testing.T) {
	var asked []string
	e := newEnv(t, func(c *Config) {
		c.Resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("127.0.0.9")}, nil
		}
		c.DestinationAllowed = func(agent, host string, ip netip.Addr) bool {
			asked = append(asked, agent+"|"+host+"|"+ip.String())
			return agent == "agent1" && host == "api.example.test" && ip == netip.MustParseAddr("127.0.0.1")
		}
	})
	resp, err := e.transparentClient(false).Get(e.url("api.example.test", "/echo"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || len(e.up.received()) != 1 {
		t.Fatalf("pinned destination: %d, upstream got %d", resp.StatusCode, len(e.up.received()))
	}
	if len(asked) != 1 || asked[0] != "agent1|api.example.test|127.0.0.1" {
		t.Fatalf("DestinationAllowed calls %v", asked)
	}
	_, err = tls.Dial("tcp", e.transAddr, &tls.Config{ServerName: "open.example.test", RootCAs: e.caPool})
	if err == nil {
		t.Fatal("an unpinned, unresolved destination was accepted")
	}
}

func TestNoSNIIsDenied(t *testing.T) {
	e := newEnv(t)
	raw, err := net.Dial("tcp", e.transAddr)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	defer c.Close()
	if err := c.Handshake(); err == nil {
		t.Fatal("handshake without SNI succeeded")
	}
	waitFor(t, "no_sni audit row", func() bool { return e.connDenies("no_sni") == 1 })
}

func TestUnknownAgent(t *testing.T) {
	e := newEnv(t)
	e.origin.Store(&Origin{OriginalDst: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), e.up.port), CgroupID: 4242})
	if _, err := tls.Dial("tcp", e.transAddr, &tls.Config{ServerName: "api.example.test", RootCAs: e.caPool}); err == nil {
		t.Fatal("TLS from an unknown agent was accepted")
	}
	waitFor(t, "agent_unknown audit row", func() bool { return e.connDenies("agent_unknown") == 1 })

	e.origin.Store(&Origin{OriginalDst: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), e.plain.port), CgroupID: 4242})
	resp, err := e.transparentClient(false).Get(fmt.Sprintf("http://plain.example.test:%d/", e.plain.port))
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, resp, 403, CodeAgentUnknown)

	// The same cgroup, once bound to an agent, is that agent.
	e.setPolicy(func(in *policy.Input) { in.Agents[0].CgroupID = 4242; in.Agents[0].Sources = nil })
	e.origin.Store(&Origin{OriginalDst: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), e.up.port), CgroupID: 4242})
	resp, err = e.transparentClient(true).Get("https://agent-vault.internal/v1/whoami")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `"agent1"`) {
		t.Fatalf("whoami by cgroup: %s", b)
	}
	if len(e.up.received())+len(e.plain.received()) != 0 {
		t.Fatal("an upstream received a request")
	}
}

// Plain HTTP (transparent port 80) is decided on the Host header and never
// carries a credential.
func TestPlainHTTPTransparent(t *testing.T) {
	e := newEnv(t)
	e.setOrigin(e.plain.port)
	c := e.transparentClient(false)
	resp, err := c.Get(fmt.Sprintf("http://plain.example.test:%d/echo", e.plain.port))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body) // keep the connection for the next request
	resp.Body.Close()
	if resp.StatusCode != 200 || len(e.plain.received()) != 1 {
		t.Fatalf("auth-none service over http: %d", resp.StatusCode)
	}
	// The same keep-alive connection is bound to its first Host.
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://plain.example.test:%d/echo", e.plain.port), nil)
	req.Host = "open.example.test"
	resp, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, resp, 421, CodeMisdirected)

	resp, err = e.transparentClient(false).Get(fmt.Sprintf("http://plainsecret.example.test:%d/echo", e.plain.port))
	if err != nil {
		t.Fatal(err)
	}
	eb := expectError(t, resp, 403, CodeHTTPSRequired)
	if !strings.Contains(eb.Error.Hint, "https://") {
		t.Errorf("hint %q", eb.Error.Hint)
	}
	if len(e.plain.received()) != 1 {
		t.Fatalf("plain upstream received %d requests, want 1", len(e.plain.received()))
	}
}

func TestAbsoluteFormProxy(t *testing.T) {
	e := newEnv(t)
	c := e.proxyClient(agentToken, false)
	resp, err := c.Get(fmt.Sprintf("http://plain.example.test:%d/echo", e.plain.port))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("absolute-form to an auth-none service: %d", resp.StatusCode)
	}
	got := e.plain.received()
	if len(got) != 1 || got[0].Header.Get("Proxy-Authorization") != "" {
		t.Fatalf("plain upstream got %+v", got)
	}
	resp, err = c.Get(fmt.Sprintf("http://plainsecret.example.test:%d/echo", e.plain.port))
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, resp, 403, CodeHTTPSRequired)
	resp, err = c.Get(fmt.Sprintf("http://other.example.test:%d/echo", e.plain.port))
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, resp, 403, CodeNoService)
	resp, err = c.Get("http://agent-vault.internal/v1/whoami")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("whoami over absolute-form: %d", resp.StatusCode)
	}
	resp, err = e.proxyClient("", false).Get(fmt.Sprintf("http://plain.example.test:%d/echo", e.plain.port))
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, resp, 407, CodeProxyAuthRequired)
	if len(e.plain.received()) != 1 {
		t.Fatalf("plain upstream received %d requests, want 1", len(e.plain.received()))
	}
}

func TestConnectionToTheBrokerItselfIsRefused(t *testing.T) {
	e := newEnv(t)
	e.origin.Store(&Origin{OriginalDst: netip.MustParseAddrPort(e.transAddr)})
	c, err := net.Dial("tcp", e.transAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read: %v, want EOF", err)
	}
	waitFor(t, "audit row", func() bool { return e.connDenies("destination_is_broker") == 1 })
}

func TestPrivateUpstreamRefusedUnlessAllowed(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.AllowPrivateUpstreams = false })
	resp, err := e.proxyClient(agentToken, false).Get(e.url("api.example.test", "/echo"))
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, resp, 403, CodeDestinationDenied)
	if _, err := tls.Dial("tcp", e.transAddr, &tls.Config{ServerName: "api.example.test", RootCAs: e.caPool}); err == nil {
		t.Fatal("transparent connection to a loopback upstream accepted")
	}
	if len(e.up.received()) != 0 {
		t.Fatal("upstream received a request")
	}
	for _, ip := range []string{"169.254.169.254", "fd00:ec2::254", "10.1.2.3", "127.0.0.1", "::1", "100.100.100.200", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1", "64:ff9b::a9fe:a9fe", "2002:808:808::1"} {
		if e.b.upstreamIPAllowed(netip.MustParseAddr(ip)) {
			t.Errorf("%s allowed", ip)
		}
	}
	for _, ip := range []string{"93.184.216.34", "64:ff9b::5db8:d822"} { // the second: NAT64 of the first
		if !e.b.upstreamIPAllowed(netip.MustParseAddr(ip)) {
			t.Errorf("public %s refused", ip)
		}
	}
}

func TestUpstreamCertificateInvalidIs502(t *testing.T) {
	e := newEnv(t)
	otherCA, _ := harness.NewTestCA()
	cert, _ := otherCA.Issue("bad.example.test")
	bad := startUpstream(t, &cert)
	resp, err := e.proxyClient(agentToken, false).Get(fmt.Sprintf("https://bad.example.test:%d/echo", bad.port))
	if err != nil {
		t.Fatal(err)
	}
	eb := expectError(t, resp, 502, CodeUpstreamError)
	if !strings.Contains(eb.Error.Message, "certificate") {
		t.Errorf("message %q", eb.Error.Message)
	}
	if len(bad.received()) != 0 {
		t.Fatal("the untrusted upstream received a request")
	}
}

// Revocation closes live keep-alive connections (transparent TLS, CONNECT
// tunnel, and absolute-form proxy connections) when the policy is swapped.
func TestRevocationClosesKeepAliveConnections(t *testing.T) {
	e := newEnv(t)
	open := func(via string) (net.Conn, *bufio.Reader) {
		var c net.Conn
		switch via {
		case "transparent":
			tc, err := tls.Dial("tcp", e.transAddr, &tls.Config{ServerName: "open.example.test", RootCAs: e.caPool, NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatal(err)
			}
			c = tc
		case "connect":
			raw, resp := rawConnect(t, e.proxyAddr, fmt.Sprintf("open.example.test:%d", e.up.port), "Bearer "+agentToken)
			if resp.StatusCode != 200 {
				t.Fatal(resp.Status)
			}
			tc := tls.Client(raw, &tls.Config{ServerName: "open.example.test", RootCAs: e.caPool, NextProtos: []string{"http/1.1"}})
			c = tc
		case "absolute":
			raw, err := net.Dial("tcp", e.proxyAddr)
			if err != nil {
				t.Fatal(err)
			}
			c = raw
		}
		t.Cleanup(func() { c.Close() })
		br := bufio.NewReader(c)
		target := fmt.Sprintf("/echo HTTP/1.1\r\nHost: open.example.test:%d\r\n\r\n", e.up.port)
		if via == "absolute" {
			target = fmt.Sprintf("http://plain.example.test:%d/echo HTTP/1.1\r\nHost: plain.example.test\r\nProxy-Authorization: Bearer %s\r\n\r\n", e.plain.port, agentToken)
		}
		io.WriteString(c, "GET "+target)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d", via, resp.StatusCode)
		}
		return c, br
	}
	type live struct {
		via string
		c   net.Conn
		br  *bufio.Reader
	}
	var conns []live
	for _, via := range []string{"transparent", "connect", "absolute"} {
		c, br := open(via)
		conns = append(conns, live{via, c, br})
	}
	start := time.Now()
	e.setPolicy(func(in *policy.Input) { in.Agents[0].Revoked = true })
	for _, l := range conns {
		l.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := l.br.ReadByte()
		var ne net.Error
		if err == nil || errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%s: connection still open after revocation (%v)", l.via, err)
		}
		t.Logf("%s: closed %v after SetPolicy (%v)", l.via, time.Since(start).Round(time.Millisecond), err)
	}
	// A new tunnel from the revoked agent is refused with a readable 403.
	_, resp := rawConnect(t, e.proxyAddr, "open.example.test:443", "Bearer "+agentToken)
	expectError(t, resp, 403, CodeAgentRevoked)
}

// An agent whose expiry passes loses its connections without a policy swap.
func TestExpiryClosesConnections(t *testing.T) {
	e := newEnv(t)
	e.setPolicy(func(in *policy.Input) { in.Agents[0].ExpiresAt = time.Now().Add(300 * time.Millisecond) })
	c, err := tls.Dial("tcp", e.transAddr, &tls.Config{ServerName: "open.example.test", RootCAs: e.caPool})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection of an expired agent still open: %v", err)
	}
}

// Garbage never panics the broker and leaves it serving.
func TestGarbageAndHalfOpenClients(t *testing.T) {
	e := newEnv(t)
	junk := make([]byte, 4096)
	rand.Read(junk)
	payloads := [][]byte{
		junk,
		append([]byte{0x16, 0x03, 0x01, 0xff, 0xff}, junk...), // a TLS record header, then noise
		[]byte{0x16},
		[]byte("GET / HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n"),
		[]byte("CONNECT api.example.test:443 HTTP/1.1\r\nProxy-Authorization: Bearer " + agentToken + "\r\n\r\n\x16\x03\x01\x00\x05hello"),
	}
	for _, addr := range []string{e.transAddr, e.proxyAddr} {
		for _, p := range payloads {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c.Write(p)
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.Copy(io.Discard, c)
			c.Close()
		}
		// half-open: connects and says nothing; Shutdown must still finish
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	resp, err := e.proxyClient(agentToken, true).Get(e.url("api.example.test", "/echo"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("after garbage: %d", resp.StatusCode)
	}
}

// Dot segments could let an upstream resolve a path outside the service's
// prefix: refused.
func TestDotSegmentsRefused(t *testing.T) {
	e := newEnv(t)
	e.setPolicy(func(in *policy.Input) { in.Services[0].Path = "/v1" })
	c, err := tls.Dial("tcp", e.transAddr, &tls.Config{ServerName: "api.example.test", RootCAs: e.caPool, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for _, p := range []string{"/v1/../admin", "/v1/%2e%2e/admin", "/v1/x\\..\\admin"} {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: api.example.test\r\n\r\n", p)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		expectError(t, resp, 400, CodeBadRequest)
	}
	if len(e.up.received()) != 0 {
		t.Fatal("upstream received a request")
	}
}

// A bound transparent connection holds its destination's pin while it
// lives, and releases it once when it closes.
func TestHoldDestinationForTheConnectionsLife(t *testing.T) {
	var mu sync.Mutex
	var held, released []string
	e := newEnv(t, func(c *Config) {
		c.HoldDestination = func(agent, host string, ip netip.Addr) func() {
			key := agent + "|" + host + "|" + ip.String()
			mu.Lock()
			held = append(held, key)
			mu.Unlock()
			return func() {
				mu.Lock()
				released = append(released, key)
				mu.Unlock()
			}
		}
	})
	client := e.transparentClient(false)
	for i := 0; i < 3; i++ { // three requests, one keep-alive connection
		resp, err := client.Get(e.url("api.example.test", "/echo"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	mu.Lock()
	if len(held) != 1 || held[0] != "agent1|api.example.test|127.0.0.1" || len(released) != 0 {
		t.Fatalf("while open: held %v, released %v", held, released)
	}
	mu.Unlock()
	client.CloseIdleConnections()
	waitFor(t, "the hold's release", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(released) == 1 && released[0] == held[0]
	})
}
