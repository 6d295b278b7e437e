package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/harness"
	"github.com/agentvault/agent-vault/internal/testutil/appliance"
)

// The admin listener answers only its own address, localhost and the names
// given with --admin-allowed-host (DNS-rebinding defence), for the API and
// the web UI alike.
func TestAdminAllowedHost(t *testing.T) {
	srv, err := harness.NewServer(appliance.Binary(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv.Env = []string{"AGENT_VAULT_TEST_KDF=fast"}
	srv.Args = []string{"--insecure-no-master-password", "--admin-allowed-host", "vault.corp.example", "--upstream-dns", "127.0.0.1:1"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	for host, want := range map[string]int{"vault.corp.example": 200, "evil.example": 403, "": 200} {
		for _, path := range []string{"/api/v1/health", "/ui/login"} {
			req, _ := http.NewRequest("GET", "http://"+srv.AdminAddr+path, nil)
			if host != "" {
				req.Host = host
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if (resp.StatusCode == 200) != (want == 200) {
				t.Errorf("Host %q %s: %d, want %d", host, path, resp.StatusCode, want)
			}
		}
	}
}
