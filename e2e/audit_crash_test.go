package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/internal/testutil/appliance"
)

// TestAuditRowsSurviveKill brokers requests through the real binary, kills
// it with SIGKILL the moment the last response arrives (inside the audit
// log's commit window), restarts it on the same data directory, and finds
// the intent row of every request that was forwarded, on a chain that
// verifies: the row is journaled before the credential is attached, and
// the restart commits what the journal holds.
func TestAuditRowsSurviveKill(t *testing.T) {
	l := startLoopback(t)
	ctx := context.Background()
	tok, err := l.admin.CreateAgent(ctx, appliance.Vault, api.AgentCreate{Name: "crasher"})
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "http", User: url.UserPassword("agent", tok.Token), Host: l.srv.ProxyAddr}),
		TLSClientConfig: &tls.Config{RootCAs: l.roots},
	}}
	const n = 30
	for i := range n {
		resp, err := hc.Get(fmt.Sprintf("https://%s/crash-%d", l.target, i))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	hc.CloseIdleConnections()
	l.srv.Kill()
	forwarded := len(l.up.Received())

	start, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := l.srv.Start(start); err != nil {
		t.Fatal(err)
	}
	page, err := l.admin.Audit(ctx, api.AuditFilter{Agent: "crasher", Action: "request", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, ev := range page.Events {
		if ev.Decision == "allow" {
			seen[ev.Path] = true
		}
	}
	for i := range n {
		if p := fmt.Sprintf("/crash-%d", i); !seen[p] {
			t.Errorf("the intent row of %s (forwarded before the kill) is missing after the restart", p)
		}
	}
	if forwarded < n {
		t.Fatalf("the upstream saw %d requests, want %d", forwarded, n)
	}
	v, err := l.admin.AuditVerify(ctx)
	if err != nil || !v.OK {
		t.Fatalf("audit verify after the crash: %+v %v", v, err)
	}
	t.Logf("%d intent rows after the restart; chain of %d rows verifies", len(seen), v.Rows)
}
