package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/admin/client"
	"github.com/agentvault/agent-vault/internal/harness"
	"github.com/agentvault/agent-vault/store"
)

// sentinel is a credential value that must never come back out.
const sentinel = "SENTINEL-7c1f-do-not-leak-9e2a"

const (
	ownerEmail = "owner@example.com"
	ownerPass  = "correct horse battery"
)

var tinyPassword = PasswordParams{MemoryKiB: 64, Time: 1, Threads: 1}

// fakeClock is a settable clock shared by the server and the store, so
// expiry and throttling are tested without waiting.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type env struct {
	t     *testing.T
	st    *store.Store
	srv   *Server
	hs    *httptest.Server
	clock *fakeClock
	logs  *harness.SyncBuffer
	c     *client.Client // logged in as the owner once setup ran
	seen  bytes.Buffer   // every response body, for the sentinel scan
}

// newEnv starts the API on a real temp store (encrypted, tiny KDF) behind
// httptest, with a fake clock and captured logs. mod adjusts the config.
func newEnv(t *testing.T, mod func(*Config)) *env {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	logs := &harness.SyncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	path := filepath.Join(t.TempDir(), "agent-vault.db")
	st, err := store.Open(path, store.Options{Password: []byte("master password"),
		KDF: store.KDFParams{MemoryKiB: 64, Time: 1, Threads: 1}, LockTimeout: 2 * time.Second, Now: clock.Now, Logger: log})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	cfg := Config{Store: st, Logger: log, Now: clock.Now, Password: tinyPassword, Version: "test"}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("admin.New: %v", err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	c, err := client.New(hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, st: st, srv: srv, hs: hs, clock: clock, logs: logs, c: c}
}

func ctx() context.Context { return context.Background() }

// setup creates the owner and logs the env's client in.
func (e *env) setup() {
	e.t.Helper()
	if _, err := e.c.Setup(ctx(), ownerEmail, ownerPass); err != nil {
		e.t.Fatalf("setup: %v", err)
	}
}

// req sends a raw request with the owner's session (if any) and returns
// status and body. headers are "Name: value" strings.
func (e *env) req(method, path, body string, headers ...string) (int, string) {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r, err := http.NewRequest(method, e.hs.URL+api.Prefix+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	if tok := e.token(); tok != "" {
		r.Header.Set("Authorization", "Bearer "+tok)
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		if k == "Host" {
			r.Host = v
			continue
		}
		if v == "" {
			r.Header.Del(k)
			continue
		}
		r.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	e.seen.Write(b)
	return resp.StatusCode, string(b)
}

// token returns the session token the env's client holds.
func (e *env) token() string { return e.c.Token() }

// wantError checks a status and the error code of an error response.
func (e *env) wantError(status int, code string, gotStatus int, body string) {
	e.t.Helper()
	if gotStatus != status {
		e.t.Fatalf("status %d, want %d; body %s", gotStatus, status, body)
	}
	var eb api.ErrorBody
	if err := json.Unmarshal([]byte(body), &eb); err != nil {
		e.t.Fatalf("error body is not JSON: %q", body)
	}
	if eb.Error.Code != code || eb.Error.Message == "" {
		e.t.Fatalf("error %+v, want code %q with a message", eb.Error, code)
	}
}

// wantAPIError checks an error from the client.
func wantAPIError(t *testing.T, err error, status int, code string) {
	t.Helper()
	ae, ok := err.(*client.APIError)
	if !ok {
		t.Fatalf("error %v (%T), want an API error %d %s", err, err, status, code)
	}
	if ae.Status != status || ae.Code != code {
		t.Fatalf("API error %d %s (%s), want %d %s", ae.Status, ae.Code, ae.Message, status, code)
	}
}
