package admin

import (
	"encoding/json"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/store"
)

// TestWalkthrough drives every route once as an operator would, through the
// Go client, and checks what the store recorded.
func TestWalkthrough(t *testing.T) {
	e := newEnv(t, nil)
	h, err := e.c.Health(ctx())
	if err != nil || h.Status != "ok" || h.SetupDone || h.Version != "test" {
		t.Fatalf("health before setup = %+v, %v", h, err)
	}
	tok, err := e.c.Setup(ctx(), ownerEmail, ownerPass)
	if err != nil {
		t.Fatalf("setup: %v", err)
	}
	if !strings.HasPrefix(tok.Token, sessionTokenPrefix) || tok.Role != "owner" || !tok.ExpiresAt.Equal(e.clock.Now().Add(12*time.Hour)) {
		t.Fatalf("setup token = %+v", tok)
	}
	if h, _ := e.c.Health(ctx()); !h.SetupDone {
		t.Fatalf("health after setup = %+v", h)
	}
	if u, err := e.c.WhoAmI(ctx()); err != nil || u.Email != ownerEmail || u.Role != "owner" {
		t.Fatalf("whoami = %+v, %v", u, err)
	}

	if _, err := e.c.CreateVault(ctx(), "prod"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CreateVault(ctx(), "dev"); err != nil {
		t.Fatal(err)
	}
	vs, err := e.c.Vaults(ctx())
	if err != nil || len(vs) != 2 || vs[0].Name != "dev" || vs[1].CreatedBy != ownerEmail {
		t.Fatalf("vaults = %+v, %v", vs, err)
	}

	cr, err := e.c.SetCredential(ctx(), "prod", "GITHUB_TOKEN", []byte(sentinel))
	if err != nil || cr.Key != "GITHUB_TOKEN" || cr.Vault != "prod" || cr.UpdatedBy != ownerEmail {
		t.Fatalf("set credential = %+v, %v", cr, err)
	}
	if v, ok := e.st.Secret("prod", "GITHUB_TOKEN"); !ok || string(v) != sentinel {
		t.Fatalf("the store did not get the value")
	}
	cs, err := e.c.Credentials(ctx(), "prod")
	if err != nil || len(cs) != 1 || cs[0].Key != "GITHUB_TOKEN" {
		t.Fatalf("credentials = %+v, %v", cs, err)
	}

	svc, err := e.c.AddService(ctx(), policy.Service{Vault: "prod", Name: "github", Host: "API.GitHub.com.",
		Path: "/repos", Methods: []string{"post", "GET"}, Auth: policy.Auth{Kind: policy.AuthBearer, Credential: "GITHUB_TOKEN"}})
	if err != nil {
		t.Fatalf("add service: %v", err)
	}
	if svc.Host != "api.github.com" || strings.Join(svc.Methods, ",") != "GET,POST" {
		t.Fatalf("service not normalized: %+v", svc)
	}
	if _, err := e.c.AddService(ctx(), policy.Service{Vault: "prod", Name: "any", Host: "*.example.com",
		Auth: policy.Auth{Kind: policy.AuthNone}}); err != nil {
		t.Fatalf("add wildcard service: %v", err)
	}
	ss, err := e.c.Services(ctx(), "prod")
	if err != nil || len(ss) != 2 || ss[0].Name != "any" || ss[1].Auth.Credential != "GITHUB_TOKEN" {
		t.Fatalf("services = %+v, %v", ss, err)
	}

	at, err := e.c.CreateAgent(ctx(), "prod", api.AgentCreate{Name: "ci-bot",
		Sources: []netip.Prefix{netip.MustParsePrefix("10.77.1.2/32")}, Cgroup: "agents.slice/ci"})
	if err != nil {
		t.Fatalf("create agent: %v", err)
	}
	if at.Name != "ci-bot" || at.Vault != "prod" || !strings.HasPrefix(at.Token, agentTokenPrefix) || len(at.Token) < 40 {
		t.Fatalf("agent token = %+v", at)
	}
	snap, err := e.st.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := snap.AgentByTokenHash(TokenHash(at.Token)); !ok || a.Name != "ci-bot" || a.Cgroup != "agents.slice/ci" {
		t.Fatalf("the snapshot does not find the agent by the SHA-256 of its token: %+v", a)
	}
	if _, err := e.c.CreateAgent(ctx(), "dev", api.AgentCreate{Name: "dev-bot"}); err != nil {
		t.Fatal(err)
	}
	all, err := e.c.Agents(ctx(), "")
	if err != nil || len(all) != 2 {
		t.Fatalf("all agents = %+v, %v", all, err)
	}
	prod, err := e.c.Agents(ctx(), "prod")
	if err != nil || len(prod) != 1 || prod[0].Sources[0].String() != "10.77.1.2/32" || prod[0].Revoked {
		t.Fatalf("prod agents = %+v, %v", prod, err)
	}
	if err := e.c.RevokeAgent(ctx(), "ci-bot"); err != nil {
		t.Fatal(err)
	}
	if prod, _ := e.c.Agents(ctx(), "prod"); !prod[0].Revoked {
		t.Fatalf("agent not revoked: %+v", prod)
	}
	if st, body := e.req("POST", "/vaults/prod/agents/dev-bot/revoke", ""); st != http.StatusNotFound {
		t.Fatalf("revoking another vault's agent through this vault: %d %s", st, body)
	}
	if st, body := e.req("DELETE", "/vaults/dev/agents/dev-bot", ""); st != http.StatusNoContent {
		t.Fatalf("delete agent in vault: %d %s", st, body)
	}
	if err := e.c.DeleteAgent(ctx(), "ci-bot"); err != nil {
		t.Fatal(err)
	}
	if err := e.c.DeleteService(ctx(), "prod", "any"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.SetCredential(ctx(), "prod", "SPARE", []byte(sentinel)); err != nil {
		t.Fatal(err)
	}
	if err := e.c.DeleteCredential(ctx(), "prod", "SPARE"); err != nil {
		t.Fatal(err)
	}
	if cs, _ := e.c.Credentials(ctx(), "prod"); len(cs) != 1 {
		t.Fatalf("credentials after delete = %+v", cs)
	}
	if err := e.c.DeleteVault(ctx(), "dev"); err != nil {
		t.Fatal(err)
	}

	page, err := e.c.Audit(ctx(), api.AuditFilter{User: ownerEmail, Action: "vault.create"})
	if err != nil || len(page.Events) != 2 || page.Events[0].Target != "dev" || page.Events[0].Actor.Name != ownerEmail {
		t.Fatalf("audit vault.create = %+v, %v", page, err)
	}
	// pagination: walk the whole log two rows at a time, newest first
	var seqs []uint64
	f := api.AuditFilter{Limit: 2}
	for i := 0; i < 100; i++ {
		p, err := e.c.Audit(ctx(), f)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range p.Events {
			seqs = append(seqs, ev.Seq)
		}
		if p.NextCursor == 0 {
			break
		}
		f.Cursor = p.NextCursor
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]-1 {
			t.Fatalf("pages are not contiguous newest-first: %v", seqs)
		}
	}
	if len(seqs) < 10 || seqs[len(seqs)-1] != 1 {
		t.Fatalf("walked %v", seqs)
	}
	v, err := e.c.AuditVerify(ctx())
	if err != nil || !v.OK || v.Rows != uint64(len(seqs)) {
		t.Fatalf("verify = %+v, %v (rows listed %d)", v, err, len(seqs))
	}

	if err := e.c.Logout(ctx()); err != nil {
		t.Fatal(err)
	}
	e.c.SetToken(tok.Token)
	_, err = e.c.Vaults(ctx())
	wantAPIError(t, err, http.StatusUnauthorized, api.CodeUnauthorized)

	e.assertNoSentinel()
}

// assertNoSentinel checks that the credential value appears in no response,
// log line or audit row.
func (e *env) assertNoSentinel() {
	e.t.Helper()
	if strings.Contains(e.seen.String(), sentinel) {
		e.t.Errorf("a response contained the credential value")
	}
	if strings.Contains(e.logs.String(), sentinel) {
		e.t.Errorf("the log contained the credential value")
	}
	rows, _, err := e.st.AuditList(store.AuditQuery{Limit: 1000})
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := json.Marshal(rows)
	if strings.Contains(string(b), sentinel) {
		e.t.Errorf("an audit row contained the credential value")
	}
}

// TestNoValueInResponses reads every listing after setting a sentinel
// credential, through raw requests so nothing is filtered by the client.
func TestNoValueInResponses(t *testing.T) {
	e := newEnv(t, nil)
	e.setup()
	e.req("POST", "/vaults", `{"name":"v"}`)
	if st, body := e.req("PUT", "/vaults/v/credentials/K", `{"value":"`+sentinel+`"}`); st != http.StatusOK {
		t.Fatalf("set: %d %s", st, body)
	}
	// setting it again (replace) answers without the value too
	e.req("PUT", "/vaults/v/credentials/K", `{"value":"`+sentinel+`-2"}`)
	e.req("POST", "/vaults/v/services", `{"name":"s","host":"api.example.com","auth":{"kind":"bearer","credential":"K"}}`)
	for _, p := range []string{"/vaults", "/vaults/v/credentials", "/vaults/v/services", "/agents", "/audit", "/audit/verify", "/health", "/session"} {
		if st, body := e.req("GET", p, ""); st != http.StatusOK {
			t.Fatalf("GET %s: %d %s", p, st, body)
		}
	}
	// a refused value is not echoed either
	st, body := e.req("PUT", "/vaults/v/credentials/K", `{"value":"`+sentinel+`\r\nX-Evil: 1"}`)
	e.wantError(http.StatusBadRequest, api.CodeInvalid, st, body)
	st, body = e.req("PUT", "/vaults/v/credentials/K", `{"value":"`+sentinel+`","extra":1}`)
	e.wantError(http.StatusBadRequest, api.CodeBadRequest, st, body)
	st, body = e.req("PUT", "/vaults/nope/credentials/K", `{"value":"`+sentinel+`"}`)
	e.wantError(http.StatusNotFound, api.CodeNotFound, st, body)
	st, body = e.req("PUT", "/vaults/v/credentials/K", `{"value":["`+sentinel+`"]}`)
	e.wantError(http.StatusBadRequest, api.CodeBadRequest, st, body)
	e.assertNoSentinel()
}

func TestHealthNotReady(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Ready = func() error { return errStarting } })
	st, body := e.req("GET", "/health", "")
	if st != http.StatusServiceUnavailable || !strings.Contains(body, `"unavailable"`) {
		t.Fatalf("health = %d %s", st, body)
	}
	h, err := e.c.Health(ctx())
	if err != nil || h.Status != "unavailable" || h.Message != errStarting.Error() {
		t.Fatalf("client health = %+v, %v", h, err)
	}
}

var errStarting = &apiError{msg: "listeners not bound yet"}

func TestCAPEM(t *testing.T) {
	e := newEnv(t, nil)
	st, body := e.req("GET", "/ca.pem", "")
	e.wantError(http.StatusNotFound, api.CodeCAUnavailable, st, body)

	pem := "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
	e = newEnv(t, func(c *Config) { c.CACert = func() ([]byte, error) { return []byte(pem), nil } })
	got, err := e.c.CACert(ctx())
	if err != nil || string(got) != pem {
		t.Fatalf("ca.pem = %q, %v", got, err)
	}
}

func TestUnknownRoute(t *testing.T) {
	e := newEnv(t, nil)
	st, body := e.req("GET", "/nope", "")
	e.wantError(http.StatusNotFound, api.CodeNotFound, st, body)
	st, body = e.req("PATCH", "/vaults", `{}`)
	e.wantError(http.StatusNotFound, api.CodeNotFound, st, body)
}

func TestRoleTable(t *testing.T) {
	vaultApprover := &principal{acct: store.Account{VaultRoles: map[string]store.Role{"prod": store.RoleApprover}}}
	globalViewer := &principal{acct: store.Account{Role: store.RoleViewer, VaultRoles: map[string]store.Role{"prod": store.RoleAdmin}}}
	agent := &principal{agent: &store.AgentRecord{}}
	for _, tc := range []struct {
		p     *principal
		vault string
		role  store.Role
		want  bool
	}{
		{&principal{acct: store.Account{Role: store.RoleOwner}}, "", store.RoleOwner, true},
		{&principal{acct: store.Account{Role: store.RoleOwner}}, "any", store.RoleAdmin, true},
		{&principal{acct: store.Account{Role: store.RoleAdmin}}, "", store.RoleOwner, false},
		{vaultApprover, "prod", store.RoleApprover, true},
		{vaultApprover, "prod", store.RoleAdmin, false},
		{vaultApprover, "dev", store.RoleViewer, false},
		{vaultApprover, "", store.RoleViewer, false},
		{globalViewer, "dev", store.RoleViewer, true},
		{globalViewer, "dev", store.RoleApprover, false},
		{globalViewer, "prod", store.RoleAdmin, true},
		{agent, "", store.RoleViewer, false},
		{agent, "prod", store.RoleViewer, false},
		{nil, "prod", store.RoleViewer, false},
	} {
		if got := tc.p.allowed(tc.vault, tc.role); got != tc.want {
			t.Errorf("allowed(%+v, %q, %q) = %v, want %v", tc.p, tc.vault, tc.role, got, tc.want)
		}
	}
}
