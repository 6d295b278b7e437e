package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/admin/client"
	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/store"
)

// as returns a client of the env's server holding token.
func (e *env) as(token string) *client.Client {
	e.t.Helper()
	c, err := client.New(e.hs.URL, client.WithToken(token))
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// world: vaults prod and dev, agent bot in prod (its token returned).
func (e *env) world() string {
	e.t.Helper()
	e.setup()
	for _, v := range []string{"prod", "dev"} {
		if _, err := e.c.CreateVault(ctx(), v); err != nil {
			e.t.Fatal(err)
		}
	}
	tok, err := e.c.CreateAgent(ctx(), "prod", api.AgentCreate{Name: "bot"})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.c.CreateAgent(ctx(), "dev", api.AgentCreate{Name: "devbot"}); err != nil {
		e.t.Fatal(err)
	}
	return tok.Token
}

func ghProposal(host string) api.ProposalCreate {
	return api.ProposalCreate{Service: policy.Service{Name: "gh", Host: host, Auth: policy.Auth{Kind: policy.AuthBearer, Credential: "GH_TOKEN"}},
		Reason: "open pull requests"}
}

func TestAgentTokenOnlyProposes(t *testing.T) {
	e := newEnv(t, nil)
	agentTok := e.world()
	ag := e.as(agentTok)

	who, err := ag.WhoAmI(ctx())
	if err != nil || who.Kind != "agent" || who.Agent != "bot" || who.Vault != "prod" {
		t.Fatalf("whoami = %+v, %v", who, err)
	}
	p, err := ag.CreateProposal(ctx(), ghProposal("api.github.com"))
	if err != nil || p.State != "pending" || p.Vault != "prod" || p.Agent != "bot" || len(p.Hash) != 64 {
		t.Fatalf("propose = %+v, %v", p, err)
	}
	// the body cannot choose another vault or agent
	other := ghProposal("api.github.com")
	other.Vault = "dev"
	_, err = ag.CreateProposal(ctx(), other)
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	st, body := e.req("POST", "/proposals", `{"name":"x","host":"x.example.com","auth":{"kind":"none"},"reason":"r","agent":"devbot"}`,
		"Authorization: Bearer "+agentTok)
	e.wantError(http.StatusBadRequest, api.CodeBadRequest, st, body)

	if got, err := ag.Proposal(ctx(), p.ID); err != nil || got.Hash != p.Hash {
		t.Fatalf("show own = %+v, %v", got, err)
	}
	ps, err := ag.Proposals(ctx(), api.ProposalFilter{})
	if err != nil || len(ps) != 1 {
		t.Fatalf("list own = %+v, %v", ps, err)
	}

	// everything else is refused for an agent token
	_, err = ag.ApproveProposal(ctx(), p.ID, api.ProposalApprove{Hash: p.Hash, Value: sentinel})
	wantAPIError(t, err, http.StatusForbidden, api.CodeAgentToken)
	_, err = ag.RejectProposal(ctx(), p.ID, api.ProposalReject{})
	wantAPIError(t, err, http.StatusForbidden, api.CodeAgentToken)
	_, err = ag.AddService(ctx(), policy.Service{Vault: "prod", Name: "x", Host: "x.example.com", Auth: policy.Auth{Kind: policy.AuthNone}})
	wantAPIError(t, err, http.StatusForbidden, api.CodeAgentToken)
	_, err = ag.SetCredential(ctx(), "prod", "GH_TOKEN", []byte(sentinel))
	wantAPIError(t, err, http.StatusForbidden, api.CodeAgentToken)
	_, err = ag.Vaults(ctx())
	wantAPIError(t, err, http.StatusForbidden, api.CodeAgentToken)
	_, err = ag.Audit(ctx(), api.AuditFilter{})
	wantAPIError(t, err, http.StatusForbidden, api.CodeAgentToken)
	err = ag.RevokeAgent(ctx(), "bot")
	wantAPIError(t, err, http.StatusForbidden, api.CodeAgentToken)
	_, err = ag.InviteUser(ctx(), api.UserInvite{Email: "x@example.com", Role: "owner"})
	wantAPIError(t, err, http.StatusForbidden, api.CodeAgentToken)

	// a human cannot propose; the owner approves with the hash shown
	_, err = e.c.CreateProposal(ctx(), ghProposal("api.github.com"))
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	shown, err := e.c.Proposal(ctx(), p.ID)
	if err != nil {
		t.Fatal(err)
	}
	// the agent changes the proposal after it was shown
	changed, err := ag.CreateProposal(ctx(), ghProposal("uploads.github.com"))
	if err != nil || changed.ID != p.ID || changed.Hash == shown.Hash {
		t.Fatalf("replace = %+v, %v", changed, err)
	}
	_, err = e.c.ApproveProposal(ctx(), p.ID, api.ProposalApprove{Hash: shown.Hash, Value: sentinel})
	wantAPIError(t, err, http.StatusConflict, api.CodeStale)
	_, err = e.c.ApproveProposal(ctx(), p.ID, api.ProposalApprove{Value: sentinel})
	wantAPIError(t, err, http.StatusBadRequest, api.CodeInvalid)
	ap, err := e.c.ApproveProposal(ctx(), p.ID, api.ProposalApprove{Hash: changed.Hash, Value: sentinel})
	if err != nil || ap.State != "approved" || ap.DecidedBy != ownerEmail {
		t.Fatalf("approve = %+v, %v", ap, err)
	}
	_, err = e.c.ApproveProposal(ctx(), p.ID, api.ProposalApprove{Hash: changed.Hash, Value: sentinel})
	wantAPIError(t, err, http.StatusConflict, api.CodeNotPending)
	svcs, err := e.c.Services(ctx(), "prod")
	if err != nil || len(svcs) != 1 || svcs[0].Host != "uploads.github.com" {
		t.Fatalf("services = %+v, %v", svcs, err)
	}
	if v, ok := e.st.Secret("prod", "GH_TOKEN"); !ok || string(v) != sentinel {
		t.Fatal("the approved credential is not served")
	}
	rows, err := e.c.Audit(ctx(), api.AuditFilter{Action: "proposal.approve"})
	if err != nil || len(rows.Events) != 1 || rows.Events[0].Actor.Name != ownerEmail {
		t.Fatalf("approve audit = %+v, %v", rows, err)
	}

	// a revoked agent's token no longer works
	if err := e.c.RevokeAgent(ctx(), "bot"); err != nil {
		t.Fatal(err)
	}
	_, err = ag.Proposals(ctx(), api.ProposalFilter{})
	wantAPIError(t, err, http.StatusUnauthorized, api.CodeUnauthorized)
	e.assertNoSentinel()
	if strings.Contains(e.logs.String(), sentinel) {
		t.Fatal("the value is in the log")
	}
}

func TestRolesEnforced(t *testing.T) {
	e := newEnv(t, nil)
	agentTok := e.world()
	invite := func(email, role, vault string) *client.Client {
		inv, err := e.c.InviteUser(ctx(), api.UserInvite{Email: email, Role: role, Vault: vault})
		if err != nil {
			t.Fatalf("invite %s: %v", email, err)
		}
		if !strings.HasPrefix(inv.InviteToken, "avi_") || !inv.Account.Invited {
			t.Fatalf("invitation = %+v", inv)
		}
		// no login before the invite is accepted
		_, err = e.as("").Login(ctx(), email, "a password of theirs")
		wantAPIError(t, err, http.StatusUnauthorized, api.CodeUnauthorized)
		c := e.as("")
		if _, err := c.AcceptInvite(ctx(), inv.InviteToken, "their own password"); err != nil {
			t.Fatalf("accept %s: %v", email, err)
		}
		_, err = e.as("").AcceptInvite(ctx(), inv.InviteToken, "their own password")
		wantAPIError(t, err, http.StatusUnauthorized, api.CodeUnauthorized)
		return c
	}
	viewer := invite("viewer@example.com", "viewer", "")
	approver := invite("approver@example.com", "approver", "prod")
	devAdmin := invite("devadmin@example.com", "admin", "dev")
	_, err := e.c.InviteUser(ctx(), api.UserInvite{Email: "x@example.com", Role: "owner", Vault: "prod"})
	wantAPIError(t, err, http.StatusBadRequest, api.CodeInvalid)

	p, err := e.as(agentTok).CreateProposal(ctx(), ghProposal("api.github.com"))
	if err != nil {
		t.Fatal(err)
	}
	svc := policy.Service{Vault: "prod", Name: "open", Host: "open.example.com", Auth: policy.Auth{Kind: policy.AuthNone}}

	// viewer: reads everything, writes nothing
	if vs, err := viewer.Vaults(ctx()); err != nil || len(vs) != 2 {
		t.Fatalf("viewer vaults = %v, %v", vs, err)
	}
	if _, err := viewer.Services(ctx(), "prod"); err != nil {
		t.Fatal(err)
	}
	_, err = viewer.AddService(ctx(), svc)
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	_, err = viewer.SetCredential(ctx(), "prod", "K", []byte(sentinel))
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	_, err = viewer.ApproveProposal(ctx(), p.ID, api.ProposalApprove{Hash: p.Hash, Value: sentinel})
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	_, err = viewer.CreateVault(ctx(), "mine")
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	_, err = viewer.Audit(ctx(), api.AuditFilter{})
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	_, err = viewer.Users(ctx())
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)

	// approver in prod: decides proposals and reads prod's audit, no direct changes
	if vs, err := approver.Vaults(ctx()); err != nil || len(vs) != 1 || vs[0].Name != "prod" {
		t.Fatalf("approver vaults = %v, %v", vs, err)
	}
	_, err = approver.AddService(ctx(), svc)
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	_, err = approver.Services(ctx(), "dev")
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	_, err = approver.Audit(ctx(), api.AuditFilter{})
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	if page, err := approver.Audit(ctx(), api.AuditFilter{Vault: "prod"}); err != nil || len(page.Events) == 0 {
		t.Fatalf("approver audit of prod = %v, %v", page, err)
	}
	_, err = approver.Audit(ctx(), api.AuditFilter{Vault: "dev"})
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	if v, err := approver.AuditVerify(ctx()); err != nil || !v.OK {
		t.Fatalf("approver verify = %+v, %v", v, err)
	}
	if ap, err := approver.ApproveProposal(ctx(), p.ID, api.ProposalApprove{Hash: p.Hash, Value: sentinel}); err != nil || ap.DecidedBy != "approver@example.com" {
		t.Fatalf("approver approves = %+v, %v", ap, err)
	}

	// admin of dev: changes dev only, sees only dev's proposals
	if _, err := devAdmin.AddService(ctx(), policy.Service{Vault: "dev", Name: "open", Host: "open.example.com", Auth: policy.Auth{Kind: policy.AuthNone}}); err != nil {
		t.Fatal(err)
	}
	_, err = devAdmin.AddService(ctx(), svc)
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	_, err = devAdmin.Proposal(ctx(), p.ID)
	wantAPIError(t, err, http.StatusNotFound, api.CodeNotFound)
	if ps, err := devAdmin.Proposals(ctx(), api.ProposalFilter{}); err != nil || len(ps) != 0 {
		t.Fatalf("dev admin sees %v, %v", ps, err)
	}
	err = devAdmin.RevokeAgent(ctx(), "bot")
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	if err := devAdmin.RevokeAgent(ctx(), "devbot"); err != nil {
		t.Fatal(err)
	}

	// the owner manages users; the last owner stays
	us, err := e.c.Users(ctx())
	if err != nil || len(us) != 4 {
		t.Fatalf("users = %+v, %v", us, err)
	}
	if _, err := e.c.GrantRole(ctx(), "viewer@example.com", api.RoleGrant{Role: "admin", Vault: "prod"}); err != nil {
		t.Fatal(err)
	}
	if _, err := viewer.AddService(ctx(), svc); err != nil {
		t.Fatalf("viewer made admin of prod: %v", err)
	}
	err = e.c.RemoveUser(ctx(), ownerEmail)
	wantAPIError(t, err, http.StatusForbidden, api.CodeForbidden)
	if err := e.c.RemoveUser(ctx(), "viewer@example.com"); err != nil {
		t.Fatal(err)
	}
	_, err = viewer.Vaults(ctx())
	wantAPIError(t, err, http.StatusUnauthorized, api.CodeUnauthorized)
	for _, a := range []string{"user.invite", "user.accept", "user.grant", "user.remove", "proposal.approve"} {
		if page, err := e.c.Audit(ctx(), api.AuditFilter{Action: a}); err != nil || len(page.Events) == 0 {
			t.Errorf("no %s row: %v", a, err)
		}
	}
}

func TestCookieSessionNeedsCSRF(t *testing.T) {
	e := newEnv(t, nil)
	e.setup()
	raw := func(method, path, body string, hdr map[string]string) (*http.Response, string) {
		r, _ := http.NewRequest(method, e.hs.URL+api.Prefix+path, strings.NewReader(body))
		if body != "" {
			r.Header.Set("Content-Type", "application/json")
		}
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, body := raw("POST", "/login?cookie=1", `{"email":"`+ownerEmail+`","password":"`+ownerPass+`"}`, nil)
	var cl api.CookieLogin
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &cl) != nil || len(cl.CSRFToken) != 64 || strings.Contains(body, "avs_") {
		t.Fatalf("cookie login: %d %s", resp.StatusCode, body)
	}
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == api.SessionCookie {
			cookie = c
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode {
		t.Fatalf("session cookie = %+v", cookie)
	}
	ck := map[string]string{"Cookie": cookie.Name + "=" + cookie.Value}
	if resp, _ := raw("GET", "/vaults", "", ck); resp.StatusCode != 200 {
		t.Fatalf("GET with the cookie: %d", resp.StatusCode)
	}
	resp, body = raw("POST", "/vaults", `{"name":"v1"}`, ck)
	e.wantError(http.StatusForbidden, api.CodeCSRF, resp.StatusCode, body)
	ck[api.CSRFHeader] = strings.Repeat("0", 64)
	resp, body = raw("POST", "/vaults", `{"name":"v1"}`, ck)
	e.wantError(http.StatusForbidden, api.CodeCSRF, resp.StatusCode, body)
	ck[api.CSRFHeader] = cl.CSRFToken
	if resp, body := raw("POST", "/vaults", `{"name":"v1"}`, ck); resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST with the CSRF token: %d %s", resp.StatusCode, body)
	}
	// the CSRF token of one session does not fit another
	other, _ := raw("POST", "/login?cookie=1", `{"email":"`+ownerEmail+`","password":"`+ownerPass+`"}`, nil)
	ck2 := map[string]string{"Cookie": other.Cookies()[0].Name + "=" + other.Cookies()[0].Value, api.CSRFHeader: cl.CSRFToken}
	resp, body = raw("POST", "/vaults", `{"name":"v2"}`, ck2)
	e.wantError(http.StatusForbidden, api.CodeCSRF, resp.StatusCode, body)
	// bearer clients need no CSRF token
	if _, err := e.c.CreateVault(ctx(), "v3"); err != nil {
		t.Fatal(err)
	}
	// logout clears the cookie and ends the session
	if resp, _ := raw("POST", "/logout", "", ck); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	if resp, _ := raw("GET", "/vaults", "", ck); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("after logout: %d", resp.StatusCode)
	}
}

func TestSessionIdleTimeout(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SessionIdle = 30 * time.Minute })
	e.setup()
	for range 4 { // activity keeps it alive past the idle limit
		e.clock.Advance(20 * time.Minute)
		if _, err := e.c.Vaults(ctx()); err != nil {
			t.Fatal(err)
		}
	}
	e.clock.Advance(31 * time.Minute)
	_, err := e.c.Vaults(ctx())
	wantAPIError(t, err, http.StatusUnauthorized, api.CodeUnauthorized)
	if !strings.Contains(err.Error(), "idle") {
		t.Fatalf("idle error: %v", err)
	}
	if page, err := e.as("").Health(ctx()); err != nil || page.Status != "ok" {
		t.Fatal(err)
	}
}

func TestAuditStreamAndExport(t *testing.T) {
	e := newEnv(t, nil)
	e.setup()
	c, cancel := context.WithTimeout(ctx(), 20*time.Second)
	defer cancel()
	got := make(chan audit.Event, 16)
	done := make(chan error, 1)
	go func() {
		done <- e.c.AuditStream(c, api.AuditFilter{Action: "vault.create"}, 0, func(ev audit.Event) error {
			got <- ev
			if ev.Target == "second" {
				return client.ErrStop
			}
			return nil
		})
	}()
	// the stream starts at the next new row: create vaults until one arrives
	var first audit.Event
	for i := 0; first.Seq == 0 && i < 200; i++ {
		if _, err := e.c.CreateVault(ctx(), "first"+strings.Repeat("x", i)); err != nil {
			t.Fatal(err)
		}
		select {
		case first = <-got:
		case <-time.After(100 * time.Millisecond):
		}
	}
	if first.Action != "vault.create" || first.Hash == "" {
		t.Fatalf("first streamed row = %+v", first)
	}
	if _, err := e.c.CreateVault(ctx(), "second"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CreateVault(ctx(), "third"); err != nil {
		t.Fatal(err)
	}
	var last audit.Event
	for last.Target != "second" {
		select {
		case last = <-got:
		case <-c.Done():
			t.Fatal("the stream did not deliver the second row")
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	var buf bytes.Buffer
	n, err := e.c.AuditExport(ctx(), api.AuditFilter{}, 0, &buf)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	v, _ := e.c.AuditVerify(ctx())
	if n != len(lines) || uint64(n) != v.Rows {
		t.Fatalf("export wrote %d (%d lines), the log has %d rows", n, len(lines), v.Rows)
	}
	var prev uint64
	for _, l := range lines {
		var ev audit.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Seq <= prev {
			t.Fatalf("export line %q", l)
		}
		prev = ev.Seq
	}
	buf.Reset()
	if n, err := e.c.AuditExport(ctx(), api.AuditFilter{Action: "vault.create"}, first.Seq, &buf); err != nil || n != 2 {
		t.Fatalf("export after %d = %d, %v", first.Seq, n, err)
	}
	st, body := e.req("GET", "/audit/stream?limit=5", "")
	e.wantError(http.StatusBadRequest, api.CodeInvalid, st, body)
}

func TestStreamEndsOnShutdown(t *testing.T) {
	e := newEnv(t, nil)
	e.setup()
	done := make(chan error, 1)
	go func() {
		done <- e.c.AuditStream(ctx(), api.AuditFilter{}, 0, func(audit.Event) error { return nil })
	}()
	time.Sleep(50 * time.Millisecond) // let it connect; the test holds either way
	if err := e.srv.Shutdown(ctx()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream outlived Shutdown")
	}
}

func TestAgentAPIHandler(t *testing.T) {
	e := newEnv(t, nil)
	e.world()
	if _, err := e.c.AddService(ctx(), policy.Service{Vault: "prod", Name: "open", Host: "open.example.com", Auth: policy.Auth{Kind: policy.AuthNone}}); err != nil {
		t.Fatal(err)
	}
	h := NewAgentAPI(e.st, func(r *http.Request) (policy.Agent, bool) {
		// the data path identifies the agent; here a test header stands in
		name := r.Header.Get("X-Test-Agent")
		return policy.Agent{Name: name, Vault: map[string]string{"bot": "prod", "devbot": "dev"}[name]}, name != ""
	}, nil)
	do := func(agent, method, path, body string) (int, string) {
		r := httptest.NewRequest(method, "https://agent-vault.internal"+path, strings.NewReader(body))
		if body != "" {
			r.Header.Set("Content-Type", "application/json")
		}
		if agent != "" {
			r.Header.Set("X-Test-Agent", agent)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code, w.Body.String()
	}
	if code, body := do("bot", "GET", "/v1/services", ""); code != 200 || !strings.Contains(body, "open.example.com") {
		t.Fatalf("services: %d %s", code, body)
	}
	code, body := do("bot", "POST", "/v1/proposals", `{"name":"gh","host":"api.github.com","auth":{"kind":"bearer","credential":"GH"},"reason":"PRs"}`)
	var p api.Proposal
	if code != http.StatusCreated || json.Unmarshal([]byte(body), &p) != nil || p.Agent != "bot" || p.Vault != "prod" {
		t.Fatalf("propose: %d %s", code, body)
	}
	if code, body := do("devbot", "GET", "/v1/proposals/1", ""); code != http.StatusNotFound || !strings.Contains(body, `"hint"`) {
		t.Fatalf("another agent's proposal: %d %s", code, body)
	}
	if code, _ := do("bot", "GET", "/v1/proposals/1", ""); code != 200 {
		t.Fatalf("own proposal: %d", code)
	}
	if code, body := do("bot", "POST", "/v1/proposals", `{"name":"x","host":"x.example.com","auth":{"kind":"none"}}`); code != 400 {
		t.Fatalf("no reason: %d %s", code, body)
	}
	if code, _ := do("", "GET", "/v1/services", ""); code != http.StatusForbidden {
		t.Fatalf("no agent: %d", code)
	}
	if ps, _ := e.st.ListProposals(store.ProposalQuery{}); len(ps) != 1 {
		t.Fatalf("proposals = %+v", ps)
	}
}
