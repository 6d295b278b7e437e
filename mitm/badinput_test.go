package mitm

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/policy"
)

// tunnel opens a CONNECT tunnel to api.example.test and a TLS session in
// it, returning the raw TLS connection so a test can write bytes no client
// library would send.
func (e *env) tunnel(t *testing.T) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	return e.tunnelTo(t, int(e.up.port))
}

// tunnelTo is tunnel to api.example.test on another upstream port.
func (e *env) tunnelTo(t *testing.T, port int) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	target := fmt.Sprintf("api.example.test:%d", port)
	c, resp := rawConnect(t, e.proxyAddr, target, "Bearer "+agentToken)
	if resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %s", resp.Status)
	}
	return e.tlsOver(t, c, "api.example.test")
}

// tlsOver is an HTTP/1.1 agent's TLS session to sni over c, trusting the
// broker's CA, with a 10 s deadline.
func (e *env) tlsOver(t *testing.T, c net.Conn, sni string) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: e.caPool, NextProtos: []string{"http/1.1"}})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return tc, bufio.NewReader(tc)
}

// Request smuggling: the broker parses every request itself and re-sends it
// upstream as a new, well-formed request, so whatever framing tricks the
// agent plays, the upstream sees exactly the requests the broker decided on
// and audited, one intent row each.
func TestSmugglingAttempts(t *testing.T) {
	cases := []struct {
		name     string
		raw      string
		wantCode int // first response's status
	}{
		{"CL and TE together", "POST /echo HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: other.example.test\r\n\r\n", 0},
		{"two Content-Lengths", "POST /echo HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabcGET /smuggled HTTP/1.1\r\n\r\n", 400},
		{"TE not chunked", "POST /echo HTTP/1.1\r\nHost: api.example.test\r\nTransfer-Encoding: gzip\r\n\r\nxyz", 501},
		{"obs-fold header", "GET /echo HTTP/1.1\r\nHost: api.example.test\r\nX-A: a\r\n b\r\n\r\n", 0}, // Go unfolds it; harmless once re-sent
		{"bare LF and space before colon", "GET /echo HTTP/1.1\r\nHost : api.example.test\r\n\r\n", 400},
		{"invalid UTF-8 in Host", "GET /echo HTTP/1.1\r\nHost: \xff\xfe.example.test\r\n\r\n", 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			tc, br := e.tunnel(t)
			if _, err := io.WriteString(tc, c.raw); err != nil {
				t.Fatal(err)
			}
			statuses, _ := readResponses(t, tc, br, 3, time.Second)
			if c.wantCode != 0 && (len(statuses) == 0 || statuses[0] != c.wantCode) {
				t.Errorf("statuses %v, want first %d", statuses, c.wantCode)
			}
			if c.name == "CL and TE together" && fmt.Sprint(statuses) != "[200 421]" {
				// the chunked body ends at 0; the rest is a second request, for
				// another host on this connection: misdirected
				t.Errorf("statuses %v, want [200 421]", statuses)
			}
			intents := len(e.sink.find(ActionRequest, "allow"))
			got := e.up.received()
			if len(got) != intents {
				t.Fatalf("upstream received %d requests, broker audited %d allowed intents (statuses %v)", len(got), intents, statuses)
			}
			for _, r := range got {
				if r.Path == "/smuggled" && r.Host != "api.example.test" {
					t.Fatalf("a smuggled request for %s reached the upstream", r.Host)
				}
			}
			e.assertNoSecretLeak()
		})
	}
}

// Absurd SNI values end the handshake; the broker keeps serving.
func TestAbsurdSNI(t *testing.T) {
	e := newEnv(t)
	for _, sni := range []string{strings.Repeat("a", 300) + ".example.test", strings.Repeat("x.", 120) + "test", "a..b.example.test"} {
		e.setOrigin(e.up.port)
		c, err := net.Dial("tcp", e.transAddr)
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: e.caPool, InsecureSkipVerify: true})
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err == nil {
			// a handshake may complete only to answer no_service; it must never reach upstream
			fmt.Fprintf(tc, "GET /echo HTTP/1.1\r\nHost: %s\r\n\r\n", sni)
			if resp, err := http.ReadResponse(bufio.NewReader(tc), nil); err == nil && resp.StatusCode == 200 {
				t.Fatalf("SNI %q got 200", sni)
			}
		}
		tc.Close()
	}
	if n := len(e.up.received()); n != 0 {
		t.Fatalf("upstream received %d requests", n)
	}
	resp, err := e.proxyClient(agentToken, false).Get(e.url("api.example.test", "/echo"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("after absurd SNIs: %d", resp.StatusCode)
	}
}

// An upstream that dies answers 502 upstream_error, and the message holds
// no secret.
func TestUpstreamFailureIs502WithoutSecret(t *testing.T) {
	e := newEnv(t)
	port := e.up.port
	e.up.srv.Close()
	resp, err := e.proxyClient(agentToken, false).Get(fmt.Sprintf("https://api.example.test:%d/echo", port))
	if err != nil {
		t.Fatal(err)
	}
	body := expectError(t, resp, http.StatusBadGateway, CodeUpstreamError)
	if strings.Contains(fmt.Sprint(body), sentinel) {
		t.Fatal("the 502 names the secret")
	}
	e.assertNoSecretLeak()
}

// An upstream error whose text carries the credential (a server echoing it
// in a refusal, a URL with the value in it) is logged redacted and never
// sent to the agent — whether or not Rewrite got to compile the scrubber.
func TestUpstreamErrorTextIsRedacted(t *testing.T) {
	e := newEnv(t)
	svc := &policy.Service{Name: "api"}
	for _, withScrubber := range []bool{false, true} {
		f := &forward{svc: svc, secret: []byte(sentinel), host: "api.example.test"}
		if withScrubber {
			f.scrub = e.b.scrubs.get([][]byte{f.secret})
		}
		r := httptest.NewRequest("GET", "https://api.example.test/x", nil)
		r = r.WithContext(context.WithValue(r.Context(), forwardKey{}, f))
		w := httptest.NewRecorder()
		e.b.upstreamError(w, r, fmt.Errorf("read from api.example.test: upstream said bad token %q (%s)", sentinel,
			base64.StdEncoding.EncodeToString([]byte(sentinel))))
		if w.Code != http.StatusBadGateway || strings.Contains(w.Body.String(), sentinel) {
			t.Fatalf("answer %d %q", w.Code, w.Body.String())
		}
		if !strings.Contains(e.logs.String(), "upstream request failed") {
			t.Fatal("the failure was not logged")
		}
	}
	if strings.Contains(e.logs.String(), base64.StdEncoding.EncodeToString([]byte(sentinel))) {
		t.Fatal("the log holds the credential base64-encoded")
	}
	// assertNoSecretLeak (at cleanup) scans the log for the raw value
}

// validSNI refuses what the CA would refuse to mint for, so such names end
// as invalid_sni, not as a leaf-minting error.
func TestValidSNIHyphens(t *testing.T) {
	for name, want := range map[string]bool{
		"api.example.test": true, "a-b.example.test": true, "localhost": true,
		"-x.example.test": false, "x-.example.test": false, "api.example.test-": false, "-": false, "a..b": false,
	} {
		if got := validSNI(name); got != want {
			t.Errorf("validSNI(%q) = %v, want %v", name, got, want)
		}
	}
}
