package mitm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/internal/harness"
	"github.com/agentvault/agent-vault/mitm/ca"
	"github.com/agentvault/agent-vault/policy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Sentinel secrets: they must reach the upstream and nothing else.
const (
	sentinel    = "sk-SENTINEL-7f3a9c1e5b2d4680"
	placeholder = "AGENT-PLACEHOLDER"
	agentToken  = "av-token-for-agent1"
)

// memSecrets is the store's Secret lookup, in memory.
type memSecrets map[string]string

func (m memSecrets) Secret(vault, key string) ([]byte, bool) {
	v, ok := m[vault+"/"+key]
	return []byte(v), ok
}

// memSink is an audit.Sink in memory that can be made to fail.
type memSink struct {
	mu     sync.Mutex
	events []audit.Event
	fail   atomic.Bool
	quiet  bool // numbers events without keeping them (benchmarks)
	n      uint64
}

func (s *memSink) Append(ctx context.Context, ev *audit.Event) error {
	if s.fail.Load() {
		return errors.New("audit store unavailable (test)")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.quiet {
		s.n++
		ev.Seq = s.n
		return nil
	}
	ev.Seq = uint64(len(s.events) + 1)
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	s.events = append(s.events, *ev)
	return nil
}

func (s *memSink) all() []audit.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]audit.Event(nil), s.events...)
}

// waitFor polls cond for up to 5 s (a liveness bound, not a speed check).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// received is what the test upstream saw of one request.
type received struct {
	Method, Host, Path, Query, Proto string
	Header                           http.Header
	Body                             string
}

// upstream is a real TLS server on loopback playing the public APIs.
type upstream struct {
	srv     *httptest.Server
	port    uint16
	mu      sync.Mutex
	got     []received
	release chan struct{} // /sse waits on it between its two events
	quiet   bool          // set before use: /small answers a fixed body, unrecorded (benchmarks)
}

func (u *upstream) received() []received {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]received(nil), u.got...)
}

var smallBody = []byte(`{"id":"cmpl-1","object":"chat.completion","model":"bench","choices":[{"text":"ok"}],"usage":{}}` + "\n")

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if u.quiet && r.URL.Path == "/small" {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(smallBody)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	u.mu.Lock()
	u.got = append(u.got, received{r.Method, r.Host, r.URL.Path, r.URL.RawQuery, r.Proto, r.Header.Clone(), string(body)})
	u.mu.Unlock()
	switch r.URL.Path {
	case "/early":
		// 103 Early Hints echoing the credential, then the answer
		w.Header().Set("X-Early-Echo", r.Header.Get("Authorization"))
		w.Header().Set("Alt-Svc", `h3=":443"`)
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("X-Early-Echo")
		w.Header().Del("Alt-Svc")
		w.Write([]byte("ok"))
		return
	case "/sse":
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: one\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-u.release:
		case <-time.After(10 * time.Second):
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "data: two\n\n")
		return
	case "/bytes":
		var n int64
		fmt.Sscan(r.URL.Query().Get("n"), &n)
		w.Header().Set("Content-Length", fmt.Sprint(n))
		buf := bytes.Repeat([]byte("0123456789abcdef"), 4096)
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
		return
	case "/redirect":
		http.Redirect(w, r, "/echo", http.StatusFound)
		return
	case "/ws":
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "not an upgrade", 400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		// Echo one frame, then send the credential the request carried
		// in every shape a frame can have: a text frame, a ping, and a
		// 100 KiB binary frame with it across the broker's 32 KiB read
		// chunk; then report whether an extension was offered, and close.
		_, _, msg, err := wsReadFrame(brw)
		if err != nil {
			return
		}
		auth := []byte(r.Header.Get("Authorization"))
		wsWriteFrame(brw, true, wsText, append([]byte("echo:"+string(msg)+" auth="), auth...), false)
		wsWriteFrame(brw, true, wsPing, auth, false)
		big := bytes.Repeat([]byte("x"), 100<<10)
		copy(big[32<<10-10:], auth)
		wsWriteFrame(brw, true, wsBinary, big, false)
		wsWriteFrame(brw, true, wsText, []byte("extensions="+r.Header.Get("Sec-WebSocket-Extensions")), false)
		wsWriteFrame(brw, true, wsClose, []byte{0x03, 0xe8}, false)
		brw.Flush()
		return
	}
	// /echo and anything else: echo the request, secret included, in the
	// body and in a header, so scrubbing is exercised.
	w.Header().Set("X-Echo-Authorization", r.Header.Get("Authorization"))
	w.Header().Set("Alt-Svc", `h3=":443"; ma=86400`)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"method": r.Method, "host": r.Host, "path": r.URL.Path, "header": r.Header, "body": string(body)})
}

func startUpstream(t testing.TB, cert *tls.Certificate) *upstream {
	u := &upstream{release: make(chan struct{})}
	u.srv = httptest.NewUnstartedServer(u)
	u.srv.EnableHTTP2 = true
	u.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // h2spec and bad-certificate noise
	if cert != nil {
		u.srv.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
		u.srv.StartTLS()
	} else {
		u.srv.Start()
	}
	u.port = netip.MustParseAddrPort(u.srv.Listener.Addr().String()).Port()
	t.Cleanup(u.srv.Close)
	return u
}

// env is one broker with its real CA, a real TLS upstream, the explicit
// proxy and the transparent listener on loopback.
type env struct {
	t         testing.TB
	ca        *ca.Authority
	caPool    *x509.CertPool
	caFile    string
	up        *upstream // TLS, a certificate for every *.example.test name below
	plain     *upstream // plain HTTP
	b         *Broker
	sink      *memSink
	logs      *harness.SyncBuffer
	proxyAddr string
	transAddr string
	origin    atomic.Pointer[Origin]
	snapIn    policy.Input
}

func testPolicy() policy.Input {
	return policy.Input{
		Version: 1,
		Vaults:  []string{"v1"},
		Services: []policy.Service{
			{Vault: "v1", Name: "api", Host: "api.example.test", Auth: policy.Auth{Kind: policy.AuthBearer, Credential: "api-key"}},
			{Vault: "v1", Name: "open", Host: "open.example.test", Auth: policy.Auth{Kind: policy.AuthNone}},
			{Vault: "v1", Name: "nocred", Host: "nocred.example.test", Auth: policy.Auth{Kind: policy.AuthBearer, Credential: "missing"}},
			{Vault: "v1", Name: "plain", Host: "plain.example.test", Auth: policy.Auth{Kind: policy.AuthNone}},
			{Vault: "v1", Name: "plainsecret", Host: "plainsecret.example.test", Auth: policy.Auth{Kind: policy.AuthBearer, Credential: "api-key"}},
			{Vault: "v1", Name: "bad", Host: "bad.example.test", Auth: policy.Auth{Kind: policy.AuthBearer, Credential: "api-key"}},
			// Not a valid service host (one label), but the snapshot does not
			// validate: h2spec can only send SNI "localhost".
			{Vault: "v1", Name: "local", Host: "localhost", Auth: policy.Auth{Kind: policy.AuthNone}},
		},
		Agents: []policy.Agent{{
			Name: "agent1", Vault: "v1", TokenHash: sha256.Sum256([]byte(agentToken)),
			Sources: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		}},
	}
}

func newEnv(t testing.TB, mod ...func(*Config)) *env {
	t.Helper()
	e := &env{t: t, sink: &memSink{}, logs: &harness.SyncBuffer{}}
	certDER, keyDER, err := ca.Generate(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	e.ca, err = ca.New(certDER, keyDER, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.caPool = x509.NewCertPool()
	e.caPool.AddCert(e.ca.Certificate())
	e.caFile = filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(e.caFile, e.ca.CertPEM(), 0o644)

	upCA, err := harness.NewTestCA()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := upCA.Issue("api.example.test", "open.example.test", "other.example.test", "nocred.example.test", "localhost",
		"basic.example.test", "hdr.example.test", "ph.example.test", "crlf.example.test")
	if err != nil {
		t.Fatal(err)
	}
	e.up = startUpstream(t, &cert)
	e.plain = startUpstream(t, nil)

	cfg := Config{
		CA:      e.ca,
		Secrets: memSecrets{"v1/api-key": sentinel, "v1/crlf": "bad\r\nX-Injected: 1"},
		Audit:   e.sink,
		Origin: func(c net.Conn) (Origin, error) {
			if o := e.origin.Load(); o != nil {
				return *o, nil
			}
			return Origin{}, errors.New("no origin")
		},
		Resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
			if strings.HasSuffix(host, ".example.test") || host == "localhost" {
				return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
			}
			return nil, errors.New("no such host (test resolver)")
		},
		UpstreamRoots:         upCA.Pool(),
		AllowPrivateUpstreams: true,
		Logger:                slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, m := range mod {
		m(&cfg)
	}
	e.b, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.snapIn = testPolicy()
	e.b.SetPolicy(policy.NewSnapshot(e.snapIn))
	e.setOrigin(e.up.port)

	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.proxyAddr, e.transAddr = pl.Addr().String(), tl.Addr().String()
	errs := make(chan error, 2)
	go func() { errs <- e.b.ServeProxy(pl) }()
	go func() { errs <- e.b.ServeTransparent(tl) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.b.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		for i := 0; i < 2; i++ {
			if err := <-errs; !errors.Is(err, ErrServerClosed) {
				t.Errorf("serve returned %v, want ErrServerClosed", err)
			}
		}
		e.assertNoSecretLeak()
	})
	return e
}

// assertNoSecretLeak scans the logs and the audit rows for the sentinel.
func (e *env) assertNoSecretLeak() {
	if strings.Contains(e.logs.String(), sentinel) {
		e.t.Errorf("the secret appears in the broker's logs")
	}
	for _, ev := range e.sink.all() {
		b, _ := json.Marshal(ev)
		if strings.Contains(string(b), sentinel) {
			e.t.Errorf("the secret appears in audit row %s", b)
		}
	}
}

func (e *env) setOrigin(port uint16) {
	e.origin.Store(&Origin{OriginalDst: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)})
}

func (e *env) setPolicy(mod func(*policy.Input)) {
	in := testPolicy()
	mod(&in)
	e.b.SetPolicy(policy.NewSnapshot(in))
}

// proxyClient goes through the explicit proxy with the agent token.
func (e *env) proxyClient(token string, h2 bool) *http.Client {
	pu := &url.URL{Scheme: "http", Host: e.proxyAddr}
	if token != "" {
		pu.User = url.UserPassword("agent", token)
	}
	tr := &http.Transport{
		Proxy:             http.ProxyURL(pu),
		TLSClientConfig:   &tls.Config{RootCAs: e.caPool},
		ForceAttemptHTTP2: h2,
	}
	if !h2 {
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// transparentClient dials the transparent listener whatever the URL says,
// as a redirected agent would.
func (e *env) transparentClient(h2 bool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", e.transAddr)
		},
		TLSClientConfig:   &tls.Config{RootCAs: e.caPool},
		ForceAttemptHTTP2: h2,
	}
	if !h2 {
		tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	}
	e.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (e *env) url(host, path string) string {
	return fmt.Sprintf("https://%s:%d%s", host, e.up.port, path)
}

type errBody struct {
	Error struct{ Code, Message, Hint string } `json:"error"`
}

// expectError checks an agent-facing error: status, JSON code and header.
func expectError(t *testing.T, resp *http.Response, status int, code string) errBody {
	t.Helper()
	defer resp.Body.Close()
	var eb errBody
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, status, raw)
	}
	if err := json.Unmarshal(raw, &eb); err != nil {
		t.Fatalf("error body is not JSON: %s", raw)
	}
	if eb.Error.Code != code || resp.Header.Get(ErrorHeader) != code {
		t.Fatalf("code %q header %q, want %q; body %s", eb.Error.Code, resp.Header.Get(ErrorHeader), code, raw)
	}
	if eb.Error.Message == "" {
		t.Fatalf("error without a message: %s", raw)
	}
	return eb
}

// rawConnect opens a CONNECT tunnel by hand and returns the proxy's answer.
func rawConnect(t *testing.T, proxyAddr, target, auth string) (net.Conn, *http.Response) {
	t.Helper()
	c, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	req := "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n"
	if auth != "" {
		req += "Proxy-Authorization: " + auth + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Time{})
	if br.Buffered() > 0 && resp.StatusCode == 200 {
		t.Fatal("proxy sent bytes after 200")
	}
	return c, resp
}

func (s *memSink) find(action, decision string) []audit.Event {
	var out []audit.Event
	for _, ev := range s.all() {
		if ev.Action == action && (decision == "" || ev.Decision == decision) {
			out = append(out, ev)
		}
	}
	return out
}
