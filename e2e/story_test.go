package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/internal/testutil/appliance"
)

// TestProposalStory is the control plane's whole story, from the command
// line and the agent's side of the wire: an agent with no access proposes a
// service (through agent-vault.internal, and through the CLI with its
// token), cannot approve itself, a human approves with the credential value
// on stdin, the agent's next call is injected, the audit shows who did what,
// and revoking the agent cuts it off.
func TestProposalStory(t *testing.T) {
	l := startLoopbackWith(t, false)
	ctx := context.Background()
	const newSecret = "sk-approved-SENTINEL-93d1"
	tok, err := l.admin.CreateAgent(ctx, appliance.Vault, api.AgentCreate{Name: "coder"})
	if err != nil {
		t.Fatal(err)
	}
	agentEnv := []string{"AGENT_VAULT_TOKEN=" + tok.Token}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		Proxy:           http.ProxyURL(&url.URL{Scheme: "http", User: url.UserPassword("agent", tok.Token), Host: l.srv.ProxyAddr}),
		TLSClientConfig: &tls.Config{RootCAs: l.roots},
	}}
	target := "https://" + l.target

	// 1. no service yet: 403 no_service, with a hint on how to propose
	resp, err := hc.Get(target + "/v1/invoices")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || resp.Header.Get("X-Agent-Vault-Error") != "no_service" || !strings.Contains(string(body), "proposal") {
		t.Fatalf("before approval: %d %s", resp.StatusCode, body)
	}

	// 2. the agent asks through agent-vault.internal (identified by its proxy token, not the body)
	proposal := map[string]any{"name": "billing", "host": appliance.APIHost,
		"auth": map[string]any{"kind": "bearer", "credential": "BILLING_KEY"}, "reason": "read invoices for the monthly report"}
	raw, _ := json.Marshal(proposal)
	resp, err = hc.Post("https://agent-vault.internal/v1/proposals", "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("POST agent-vault.internal/v1/proposals: %d %s", resp.StatusCode, body)
	}
	var created api.Proposal
	if err := json.Unmarshal(body, &created); err != nil || created.Agent != "coder" || created.State != "pending" {
		t.Fatalf("proposal answer %s (%v)", body, err)
	}

	// the CLI does the same with an agent token, and the agent cannot approve
	r := l.srv.CLI("", agentEnv, "proposal", "create", "--vault", appliance.Vault, "--name", "status", "--host", "status.example.test",
		"--auth", "none", "--reason", "check uptime", "--json")
	if r.Code != 0 {
		t.Fatalf("agent proposal create: %d %s", r.Code, r.Stderr)
	}
	r = l.srv.CLI("x\n", agentEnv, "proposal", "approve", fmt.Sprint(created.ID), "--hash", created.Hash)
	if r.Code == 0 || !strings.Contains(r.Stderr+r.Stdout, "403") && !strings.Contains(strings.ToLower(r.Stderr), "agent") {
		t.Fatalf("an agent approved its own proposal: %d %s %s", r.Code, r.Stdout, r.Stderr)
	}

	// 3. a human reviews and approves, the value on stdin
	if _, err := l.srv.MustCLI("owner-password-1\n", "login", "--email", "owner@example.test"); err != nil {
		t.Fatal(err)
	}
	var shown api.Proposal
	if err := l.srv.CLIJSON(&shown, "", "proposal", "show", fmt.Sprint(created.ID)); err != nil {
		t.Fatal(err)
	}
	out, err := l.srv.MustCLI(newSecret+"\n", "proposal", "approve", fmt.Sprint(shown.ID), "--hash", shown.Hash)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, newSecret) {
		t.Fatal("approve printed the credential value")
	}

	// 4. the agent's next call carries the approved credential
	before := len(l.up.Received())
	resp, err = hc.Get(target + "/v1/invoices")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	got := l.up.Received()
	if resp.StatusCode != 200 || len(got) != before+1 || got[len(got)-1].Header.Get("Authorization") != "Bearer "+newSecret {
		t.Fatalf("after approval: %d, upstream saw %d new requests", resp.StatusCode, len(got)-before)
	}
	if strings.Contains(string(body), newSecret) {
		t.Fatal("the agent's response holds the secret")
	}

	// 5. the audit says who did what
	auditOut, err := l.srv.MustCLI("", "audit", "list", "--limit", "200", "--json")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(auditOut, newSecret) {
		t.Fatal("an audit row holds the secret")
	}
	for _, want := range []string{`"proposal.create"`, `"proposal.approve"`, `"owner@example.test"`, `"coder"`, `"request"`} {
		if !strings.Contains(auditOut, want) {
			t.Errorf("audit list lacks %s", want)
		}
	}

	// 6. revoking the agent cuts it off at once
	if _, err := l.srv.MustCLI("", "agent", "revoke", "coder"); err != nil {
		t.Fatal(err)
	}
	hc.CloseIdleConnections()
	resp, err = hc.Get(target + "/v1/invoices")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("a revoked agent's request went through")
		}
	}
	if _, err := l.srv.MustCLI("", "audit", "verify"); err != nil {
		t.Fatal(err)
	}
	// the approved value, like the seeded one, is nowhere but on the wire
	appliance.AssertNoSecretAnywhere(t, l.srv, newSecret)
}
