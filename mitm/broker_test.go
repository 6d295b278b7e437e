package mitm

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

// The core witness: the upstream receives the real credential (and not the
// agent's placeholder), the agent's response carries no secret even though
// the upstream echoes it in body and header, Alt-Svc is dropped, and the
// audit has an intent row then a completion row pointing at it.
func TestInjectionReachesUpstreamAndResponseIsScrubbed(t *testing.T) {
	for _, tc := range []struct {
		name string
		h2   bool
		via  string
	}{{"proxy-h1", false, "proxy"}, {"proxy-h2", true, "proxy"}, {"transparent-h1", false, "transparent"}, {"transparent-h2", true, "transparent"}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			c := e.proxyClient(agentToken, tc.h2)
			if tc.via == "transparent" {
				c = e.transparentClient(tc.h2)
			}
			req, _ := http.NewRequest("POST", e.url("api.example.test", "/v1/chat?x=1"), strings.NewReader(`{"q":"hi"}`))
			req.Header.Set("Authorization", "Bearer "+placeholder)
			req.Header.Set("X-Agent-Vault-Debug", "1")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			wantProto := "HTTP/1.1"
			if tc.h2 {
				wantProto = "HTTP/2.0"
			}
			if resp.Proto != wantProto {
				t.Errorf("agent side spoke %s, want %s", resp.Proto, wantProto)
			}
			got := e.up.received()
			if len(got) != 1 {
				t.Fatalf("upstream received %d requests, want 1", len(got))
			}
			r := got[0]
			if a := r.Header.Get("Authorization"); a != "Bearer "+sentinel {
				t.Errorf("upstream Authorization = %q, want the real credential", a)
			}
			if strings.Contains(strings.Join(r.Header.Values("Authorization"), ","), placeholder) {
				t.Errorf("the placeholder reached the upstream")
			}
			for k := range r.Header {
				if strings.HasPrefix(k, "Proxy-") || strings.HasPrefix(k, "X-Agent-Vault") || strings.HasPrefix(k, "X-Forwarded") {
					t.Errorf("upstream received header %s", k)
				}
			}
			if r.Path != "/v1/chat" || r.Query != "x=1" || r.Body != `{"q":"hi"}` || r.Method != "POST" {
				t.Errorf("upstream got %+v", r)
			}
			if !strings.HasPrefix(r.Host, "api.example.test") {
				t.Errorf("upstream Host %q", r.Host)
			}
			if strings.Contains(string(body), sentinel) {
				t.Errorf("the secret reached the agent in the body: %s", body)
			}
			for k, vs := range resp.Header {
				if strings.Contains(strings.Join(vs, ","), sentinel) {
					t.Errorf("the secret reached the agent in header %s", k)
				}
			}
			if resp.Header.Get("X-Echo-Authorization") == "" {
				t.Errorf("echo header missing: scrubbing should redact, not drop")
			}
			if resp.Header.Get("Alt-Svc") != "" {
				t.Errorf("Alt-Svc reached the agent")
			}
			waitFor(t, "completion audit row", func() bool { return len(e.sink.find(ActionRequestComplete, "")) == 1 })
			intents := e.sink.find(ActionRequest, audit.DecisionAllow)
			comp := e.sink.find(ActionRequestComplete, "")
			if len(intents) != 1 {
				t.Fatalf("intent rows: %+v", e.sink.all())
			}
			in := intents[0]
			if in.Actor.Name != "agent1" || in.Vault != "v1" || in.Service != "api" || in.Credential != "api-key" ||
				in.Method != "POST" || in.Host != "api.example.test" || in.Path != "/v1/chat" {
				t.Errorf("intent row %+v", in)
			}
			if comp[0].Ref != in.Seq || comp[0].Status != 200 || comp[0].Bytes != int64(len(body)) || comp[0].Duration <= 0 {
				t.Errorf("completion row %+v (intent seq %d, body %d bytes)", comp[0], in.Seq, len(body))
			}
		})
	}
}

func TestNoServiceAnswersJSONAndSendsNothingUpstream(t *testing.T) {
	e := newEnv(t)
	for name, c := range map[string]*http.Client{"proxy": e.proxyClient(agentToken, false), "transparent": e.transparentClient(true)} {
		resp, err := c.Get(e.url("other.example.test", "/secret-stuff"))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		eb := expectError(t, resp, 403, CodeNoService)
		if !strings.Contains(eb.Error.Message, "other.example.test") || !strings.Contains(eb.Error.Hint, "agent-vault.internal/v1/proposals") {
			t.Errorf("%s: unhelpful error %+v", name, eb)
		}
	}
	if n := len(e.up.received()); n != 0 {
		t.Fatalf("upstream received %d requests", n)
	}
	denies := e.sink.find(ActionRequest, audit.DecisionDeny)
	if len(denies) != 2 || denies[0].Reason != "no_service_for_host" || denies[0].Host != "other.example.test" {
		t.Fatalf("deny rows %+v", denies)
	}
}

func TestMisdirectedHTTP1(t *testing.T) {
	e := newEnv(t)
	req, _ := http.NewRequest("GET", e.url("api.example.test", "/echo"), nil)
	req.Host = "open.example.test"
	resp, err := e.transparentClient(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, resp, 421, CodeMisdirected)
	if n := len(e.up.received()); n != 0 {
		t.Fatalf("upstream received %d requests", n)
	}
}

// A second HTTP/2 request on the same connection with another :authority
// gets 421, although the first one went through.
func TestMisdirectedHTTP2SecondAuthority(t *testing.T) {
	e := newEnv(t)
	c := e.transparentClient(true)
	var reused []bool
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = append(reused, i.Reused) }}
	do := func(host string) *http.Response {
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", e.url("open.example.test", "/echo"), nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.ProtoMajor != 2 {
			t.Fatalf("not HTTP/2: %s", resp.Proto)
		}
		return resp
	}
	resp := do("open.example.test")
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("first request: %d", resp.StatusCode)
	}
	expectError(t, do("api.example.test"), 421, CodeMisdirected)
	if len(reused) != 2 || !reused[1] {
		t.Fatalf("second request did not reuse the connection: %v", reused)
	}
	if n := len(e.up.received()); n != 1 {
		t.Fatalf("upstream received %d requests, want 1", n)
	}
}

func TestProxyAuthRequired(t *testing.T) {
	e := newEnv(t)
	for _, auth := range []string{"", "Basic " + base64.StdEncoding.EncodeToString([]byte("agent:wrong")), "Bearer wrong", "Digest x"} {
		_, resp := rawConnect(t, e.proxyAddr, "api.example.test:443", auth)
		if resp.Header.Get("Proxy-Authenticate") == "" {
			t.Errorf("auth %q: no Proxy-Authenticate", auth)
		}
		expectError(t, resp, 407, CodeProxyAuthRequired)
	}
	// Bearer works as well as Basic.
	_, resp := rawConnect(t, e.proxyAddr, "api.example.test:443", "Bearer "+agentToken)
	if resp.StatusCode != 200 {
		t.Fatalf("bearer token: %d", resp.StatusCode)
	}
	resp, err := e.proxyClient("", false).Get(e.url("api.example.test", "/echo"))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a client without a token got through: %d", resp.StatusCode)
	}
	if n := len(e.up.received()); n != 0 {
		t.Fatalf("upstream received %d requests", n)
	}
}

func TestMalformedConnectIs400(t *testing.T) {
	e := newEnv(t)
	auth := "Bearer " + agentToken
	for _, target := range []string{"api.example.test", "api.example.test:99999", "bad_name!:443", ":443"} {
		_, resp := rawConnect(t, e.proxyAddr, target, auth)
		expectError(t, resp, 400, CodeBadRequest)
	}
	// net/http refuses this one before the handler: still a 400.
	_, resp := rawConnect(t, e.proxyAddr, "api.example.test:x", auth)
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("non-numeric port: %d", resp.StatusCode)
	}
	_, resp = rawConnect(t, e.proxyAddr, "127.0.0.1:443", auth)
	expectError(t, resp, 403, CodeNoService)
}

// Audit before injection: a failing sink means 503 and nothing upstream.
func TestAuditFailureFailsClosed(t *testing.T) {
	e := newEnv(t)
	e.sink.fail.Store(true)
	req, _ := http.NewRequest("GET", e.url("api.example.test", "/echo"), nil)
	resp, err := e.proxyClient(agentToken, false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, resp, 503, CodeAuditUnavailable)
	if n := len(e.up.received()); n != 0 {
		t.Fatalf("upstream received %d requests although the audit failed", n)
	}
}

func TestCredentialMissing(t *testing.T) {
	e := newEnv(t)
	resp, err := e.transparentClient(false).Get(e.url("nocred.example.test", "/x"))
	if err != nil {
		t.Fatal(err)
	}
	eb := expectError(t, resp, 403, CodeCredentialMissing)
	if !strings.Contains(eb.Error.Hint, "credential set") {
		t.Errorf("hint %q", eb.Error.Hint)
	}
}

func TestRedirectsAreNotFollowed(t *testing.T) {
	e := newEnv(t)
	resp, err := e.proxyClient(agentToken, true).Get(e.url("api.example.test", "/redirect"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/echo" {
		t.Fatalf("got %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if got := e.up.received(); len(got) != 1 || got[0].Path != "/redirect" {
		t.Fatalf("upstream received %+v", got)
	}
}

func TestWhoami(t *testing.T) {
	e := newEnv(t)
	for name, c := range map[string]*http.Client{"proxy": e.proxyClient(agentToken, false), "transparent": e.transparentClient(true)} {
		resp, err := c.Get("https://agent-vault.internal/v1/whoami")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var got map[string]string
		json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if resp.StatusCode != 200 || got["agent"] != "agent1" || got["vault"] != "v1" {
			t.Fatalf("%s: %d %v", name, resp.StatusCode, got)
		}
		resp, err = c.Get("https://agent-vault.internal/v1/nothing")
		if err != nil {
			t.Fatal(err)
		}
		expectError(t, resp, 404, CodeNotFound)
	}
}

// The agent-facing certificate is minted by our CA for exactly the SNI.
func TestLeafIsForTheSNI(t *testing.T) {
	e := newEnv(t)
	c, err := tls.Dial("tcp", e.transAddr, &tls.Config{ServerName: "api.example.test", RootCAs: e.caPool, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cs := c.ConnectionState()
	if cs.NegotiatedProtocol != "h2" {
		t.Errorf("ALPN %q, want h2", cs.NegotiatedProtocol)
	}
	if err := cs.PeerCertificates[0].VerifyHostname("api.example.test"); err != nil {
		t.Error(err)
	}
}

// The snapshot is loaded per request: removing a service denies the next
// request on the same keep-alive connection.
func TestPolicyChangeAppliesToTheNextRequest(t *testing.T) {
	e := newEnv(t)
	c := e.transparentClient(true)
	var reused []bool
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = append(reused, i.Reused) }}
	get := func() *http.Response {
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", e.url("api.example.test", "/echo"), nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	resp := get()
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	e.setPolicy(func(in *policy.Input) { in.Services = in.Services[1:] }) // drop "api"
	expectError(t, get(), 403, CodeNoService)
	if len(reused) != 2 || !reused[1] {
		t.Fatalf("not the same connection: %v", reused)
	}
	if len(e.up.received()) != 1 {
		t.Fatalf("upstream received %d", len(e.up.received()))
	}
}

// One structured log line per request, with stable keys.
func TestOneLogLinePerRequest(t *testing.T) {
	e := newEnv(t)
	c := e.proxyClient(agentToken, false)
	for _, host := range []string{"api.example.test", "other.example.test"} {
		resp, err := c.Get(e.url(host, "/echo"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	var lines []map[string]any
	collect := func() bool {
		lines = lines[:0]
		for _, l := range strings.Split(e.logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "request" {
				lines = append(lines, m)
			}
		}
		return len(lines) >= 2
	}
	// The line is written when the handler returns, which may be just after
	// the client has read the whole response.
	waitFor(t, "two request log lines", collect)
	collect()
	if len(lines) != 2 {
		t.Fatalf("%d request log lines, want 2:\n%s", len(lines), e.logs.String())
	}
	allow, deny := lines[0], lines[1]
	if allow["host"] != "api.example.test" { // the two lines may land in either order
		allow, deny = deny, allow
	}
	if allow["decision"] != "allow" || allow["service"] != "api" || allow["status"] != float64(200) || allow["agent"] != "agent1" {
		t.Errorf("allow line %v", allow)
	}
	if deny["decision"] != "deny" || deny["code"] != CodeNoService || deny["status"] != float64(403) {
		t.Errorf("deny line %v", deny)
	}
}

// Shutdown lets a request run until its deadline, then cuts it; nothing
// leaks (goleak checks the whole package at exit).
func TestShutdownCutsLongStreams(t *testing.T) {
	e := newEnv(t)
	resp, err := e.proxyClient(agentToken, true).Get(e.url("api.example.test", "/sse"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := e.b.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown: %v, want deadline exceeded", err)
	}
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("the stream survived shutdown")
	}
	waitFor(t, "completion row", func() bool { return len(e.sink.find(ActionRequestComplete, "")) == 1 })
}
