package admin

import (
	"bufio"
	"context"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/store"
)

// The web UI's form actions and role checks (helpers in ui_test.go).

func TestUIApproveAndReject(t *testing.T) {
	e := newUIEnv(t)
	agentTok := e.uiWorld()
	b := e.browser()
	b.login(ownerEmail, ownerPass)
	ps, err := e.st.ListProposals(store.ProposalQuery{})
	if err != nil || len(ps) != 1 {
		t.Fatalf("proposals = %v, %v", ps, err)
	}
	id := ps[0].ID
	idS := "1"
	_, page := b.get("/ui/proposals")
	shown := proposalHash(t, page, idS)
	if shown != ps[0].Hash {
		t.Fatalf("the page shows hash %s, the proposal has %s", shown, ps[0].Hash)
	}
	form := url.Values{"hash": {shown}, "credential": {"GH_TOKEN"}, "value": {sentinel}}
	unchanged := func(what string) {
		t.Helper()
		p, err := e.st.GetProposal(id)
		if err != nil || p.State != store.ProposalPending {
			t.Fatalf("after %s: proposal %+v, %v", what, p, err)
		}
		if _, ok := e.st.Secret("prod", "GH_TOKEN"); ok {
			t.Fatalf("after %s: the credential was stored", what)
		}
	}
	// no CSRF field, a wrong one, another session's
	resp, body := b.post("/ui/proposals/1/approve", form)
	wantStatus(t, "approve without CSRF", resp, body, http.StatusForbidden)
	unchanged("no CSRF")
	form.Set("csrf", strings.Repeat("0", 64))
	resp, body = b.post("/ui/proposals/1/approve", form)
	wantStatus(t, "approve with a wrong CSRF", resp, body, http.StatusForbidden)
	unchanged("a wrong CSRF")
	other := e.browser()
	other.login(ownerEmail, ownerPass)
	form.Set("csrf", other.csrf)
	resp, body = b.post("/ui/proposals/1/approve", form)
	wantStatus(t, "approve with another session's CSRF", resp, body, http.StatusForbidden)
	unchanged("another session's CSRF")
	// the JSON API's header does not replace the form field
	r, _ := http.NewRequest("POST", e.hs.URL+"/ui/proposals/1/approve", strings.NewReader(url.Values{"hash": {shown}, "value": {sentinel}}.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set(api.CSRFHeader, b.csrf)
	resp, body = b.do(r)
	wantStatus(t, "approve with the CSRF header only", resp, body, http.StatusForbidden)
	unchanged("the CSRF header only")
	// a cross-site form post is refused by the origin check
	form.Set("csrf", b.csrf)
	r, _ = http.NewRequest("POST", e.hs.URL+"/ui/proposals/1/approve", strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Origin", "https://evil.example.com")
	if resp, _ = b.do(r); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin approve = %d", resp.StatusCode)
	}
	unchanged("a cross-origin post")
	// nor is a null origin the browser does not call same-origin (a
	// sandboxed frame of another site), or without Sec-Fetch-Site
	for _, site := range []string{"cross-site", ""} {
		r, _ = http.NewRequest("POST", e.hs.URL+"/ui/proposals/1/approve", strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Origin", "null")
		if site != "" {
			r.Header.Set("Sec-Fetch-Site", site)
		}
		if resp, _ = b.do(r); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("null origin, Sec-Fetch-Site %q: approve = %d", site, resp.StatusCode)
		}
		unchanged("a null-origin post")
	}

	// the agent changes its proposal after the page was shown: stale
	if _, err := e.as(agentTok).CreateProposal(ctx(), ghProposal("uploads.github.com")); err != nil {
		t.Fatal(err)
	}
	resp, body = b.post("/ui/proposals/1/approve", form)
	wantStatus(t, "approve a changed proposal", resp, body, http.StatusConflict)
	unchanged("a stale approval")
	// no hash at all is refused too
	form.Del("hash")
	resp, body = b.post("/ui/proposals/1/approve", form)
	wantStatus(t, "approve without a hash", resp, body, http.StatusBadRequest)
	unchanged("an approval without hash")

	_, page = b.get("/ui/proposals")
	form.Set("hash", proposalHash(t, page, idS))
	resp, body = b.post("/ui/proposals/1/approve", form)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/proposals?done=approved" {
		t.Fatalf("approve = %d %s\n%s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	p, err := e.st.GetProposal(id)
	if err != nil || p.State != store.ProposalApproved || p.DecidedBy != ownerEmail {
		t.Fatalf("approved proposal = %+v, %v", p, err)
	}
	svcs, err := e.st.Services("prod")
	if err != nil || len(svcs) != 2 || svcs[0].Name != "gh" || svcs[0].Host != "uploads.github.com" {
		t.Fatalf("services = %+v, %v", svcs, err)
	}
	if v, ok := e.st.Secret("prod", "GH_TOKEN"); !ok || string(v) != sentinel {
		t.Fatal("the approved credential is not served")
	}
	_, page = b.get("/ui/proposals?done=approved")
	if !strings.Contains(page, "Proposal approved") || strings.Contains(page, `/approve"`) {
		t.Fatal("after approval the page shows no message or still the form")
	}
	resp, body = b.post("/ui/proposals/1/approve", form)
	wantStatus(t, "approve twice", resp, body, http.StatusConflict)

	// reject another one with its hash
	if _, err := e.as(agentTok).CreateProposal(ctx(), api.ProposalCreate{Service: policy.Service{Name: "open",
		Host: "open.example.com", Auth: policy.Auth{Kind: policy.AuthNone}}, Reason: "read docs"}); err != nil {
		t.Fatal(err)
	}
	_, page = b.get("/ui/proposals")
	if strings.Contains(page, `name="value"`) {
		t.Error("an auth-none proposal asks for a credential value")
	}
	h := proposalHash(t, page, "2")
	resp, body = b.post("/ui/proposals/2/reject", url.Values{"csrf": {b.csrf}, "hash": {h}, "note": {"not <now>"}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("reject = %d\n%s", resp.StatusCode, body)
	}
	if p, err := e.st.GetProposal(2); err != nil || p.State != store.ProposalRejected || p.Note != "not <now>" {
		t.Fatalf("rejected = %+v, %v", p, err)
	}
	_, page = b.get("/ui/proposals?state=rejected")
	if !strings.Contains(page, "not &lt;now&gt;") {
		t.Fatal("the rejection note is not shown escaped")
	}
	e.assertNoSentinel()
}

func TestUIRevokeAndSetCredential(t *testing.T) {
	e := newUIEnv(t)
	e.uiWorld()
	b := e.browser()
	b.login(ownerEmail, ownerPass)
	active := func(name string) bool {
		as, err := e.st.Agents("")
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			if a.Name == name {
				return !a.Revoked
			}
		}
		t.Fatalf("no agent %s", name)
		return false
	}
	resp, body := b.post("/ui/vaults/prod/agents/bot/revoke", url.Values{})
	wantStatus(t, "revoke without CSRF", resp, body, http.StatusForbidden)
	if !active("bot") {
		t.Fatal("a refused revoke revoked")
	}
	// the agent must belong to the page's vault
	resp, body = b.post("/ui/vaults/prod/agents/devbot/revoke", url.Values{"csrf": {b.csrf}})
	wantStatus(t, "revoke through another vault", resp, body, http.StatusNotFound)
	resp, body = b.post("/ui/vaults/prod/agents/bot/revoke", url.Values{"csrf": {b.csrf}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/vaults/prod?done=revoked" {
		t.Fatalf("revoke = %d %s\n%s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	if active("bot") || !active("devbot") {
		t.Fatal("revoke did not apply to exactly bot")
	}
	_, page := b.get("/ui/vaults/prod?done=revoked")
	if !strings.Contains(page, `class="state revoked"`) || strings.Contains(page, "/agents/bot/revoke") {
		t.Fatal("the page does not show bot revoked")
	}

	// set a credential value: new, replaced, refused values
	const second = sentinel + "-second"
	resp, body = b.post("/ui/vaults/prod/credentials", url.Values{"key": {"NEW_KEY"}, "value": {second}})
	wantStatus(t, "set without CSRF", resp, body, http.StatusForbidden)
	if _, ok := e.st.Secret("prod", "NEW_KEY"); ok {
		t.Fatal("a refused set stored the value")
	}
	resp, body = b.post("/ui/vaults/prod/credentials", url.Values{"csrf": {b.csrf}, "key": {"NEW_KEY"}, "value": {second}})
	wantStatus(t, "set", resp, body, http.StatusSeeOther)
	if v, ok := e.st.Secret("prod", "NEW_KEY"); !ok || string(v) != second {
		t.Fatal("the new credential is not stored")
	}
	resp, body = b.post("/ui/vaults/prod/credentials", url.Values{"csrf": {b.csrf}, "key": {"STRIPE_KEY"}, "value": {sentinel + "\r\nX: y"}})
	wantStatus(t, "a value with CR/LF", resp, body, http.StatusBadRequest)
	resp, body = b.post("/ui/vaults/prod/credentials", url.Values{"csrf": {b.csrf}, "key": {"<bad>"}, "value": {sentinel}})
	wantStatus(t, "a bad key", resp, body, http.StatusBadRequest)
	if strings.Contains(body, "<bad>") {
		t.Fatal("a bad key is echoed unescaped")
	}
	if v, _ := e.st.Secret("prod", "STRIPE_KEY"); string(v) != sentinel {
		t.Fatal("a refused value replaced the credential")
	}
	_, page = b.get("/ui/vaults/prod?done=credential")
	if !strings.Contains(page, "NEW_KEY") || !strings.Contains(page, "Credential value saved") {
		t.Fatal("the vault page does not list the new credential")
	}
	if strings.Contains(e.seen.String(), second) {
		t.Fatal("a page carries the new value")
	}
	e.assertNoSentinel()
}

// uiUser invites email with role (in vault, or instance-wide) and logs a
// browser in as them.
func (e *env) uiUser(email, role, vault string) *browser {
	e.t.Helper()
	inv, err := e.c.InviteUser(ctx(), api.UserInvite{Email: email, Role: role, Vault: vault})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.as("").AcceptInvite(ctx(), inv.InviteToken, "their own password"); err != nil {
		e.t.Fatal(err)
	}
	b := e.browser()
	b.login(email, "their own password")
	return b
}

func TestUIRoles(t *testing.T) {
	e := newUIEnv(t)
	e.uiWorld()
	viewer := e.uiUser("viewer@example.com", "viewer", "")
	approver := e.uiUser("approver@example.com", "approver", "prod")

	// the viewer reads, sees no control, and is refused every change
	_, page := viewer.get("/ui/vaults/prod")
	if !strings.Contains(page, ">bot<") || !strings.Contains(page, "STRIPE_KEY") {
		t.Fatal("the viewer does not see the vault")
	}
	for _, ctl := range []string{"/revoke", "Set value", `name="value"`, "Add a credential"} {
		if strings.Contains(page, ctl) {
			t.Errorf("the viewer's vault page shows %q", ctl)
		}
	}
	_, page = viewer.get("/ui/proposals")
	if !strings.Contains(page, "api.github.com") || strings.Contains(page, "/approve") || strings.Contains(page, "/reject") {
		t.Fatal("the viewer's proposals page: wrong controls")
	}
	if strings.Contains(page, `href="/ui/audit"`) {
		t.Error("the viewer is offered the audit log")
	}
	ps, _ := e.st.ListProposals(store.ProposalQuery{})
	for path, form := range map[string]url.Values{
		"/ui/proposals/1/approve":           {"hash": {ps[0].Hash}, "value": {sentinel}},
		"/ui/proposals/1/reject":            {"hash": {ps[0].Hash}},
		"/ui/vaults/prod/agents/bot/revoke": {},
		"/ui/vaults/prod/credentials":       {"key": {"STRIPE_KEY"}, "value": {"other"}},
	} {
		form.Set("csrf", viewer.csrf)
		resp, body := viewer.post(path, form)
		wantStatus(t, "viewer POST "+path, resp, body, http.StatusForbidden)
	}
	if p, _ := e.st.GetProposal(1); p.State != store.ProposalPending {
		t.Fatal("the viewer decided a proposal")
	}
	if as, _ := e.st.Agents("prod"); as[0].Revoked {
		t.Fatal("the viewer revoked an agent")
	}
	if v, _ := e.st.Secret("prod", "STRIPE_KEY"); string(v) != sentinel {
		t.Fatal("the viewer set a credential")
	}
	resp, body := viewer.get("/ui/audit")
	wantStatus(t, "viewer audit", resp, body, http.StatusForbidden)

	// the approver of prod: decides prod's proposals, cannot see dev, reads
	// prod's audit log, changes nothing directly
	resp, body = approver.get("/ui/vaults/dev")
	wantStatus(t, "approver reads dev", resp, body, http.StatusForbidden)
	_, page = approver.get("/ui/")
	if strings.Contains(page, "/ui/vaults/dev") || !strings.Contains(page, "/ui/vaults/prod") {
		t.Fatal("the approver's overview lists the wrong vaults")
	}
	_, page = approver.get("/ui/vaults/prod")
	if strings.Contains(page, "/revoke") || strings.Contains(page, "Set value") {
		t.Fatal("the approver is offered admin controls")
	}
	resp, body = approver.post("/ui/vaults/prod/agents/bot/revoke", url.Values{"csrf": {approver.csrf}})
	wantStatus(t, "approver revokes", resp, body, http.StatusForbidden)
	resp, page = approver.get("/ui/audit")
	wantStatus(t, "approver audit", resp, page, http.StatusOK)
	if !strings.Contains(page, `<option value="prod" selected>`) || strings.Contains(page, `value="dev"`) {
		t.Fatalf("the approver's audit page is not scoped to prod:\n%s", page)
	}
	resp, body = approver.get("/ui/audit?vault=dev")
	wantStatus(t, "approver audit of dev", resp, body, http.StatusForbidden)
	_, page = approver.get("/ui/proposals")
	h := proposalHash(t, page, "1")
	resp, body = approver.post("/ui/proposals/1/approve", url.Values{"csrf": {approver.csrf}, "hash": {h}, "value": {sentinel}})
	wantStatus(t, "approver approves", resp, body, http.StatusSeeOther)
	if p, _ := e.st.GetProposal(1); p.State != store.ProposalApproved || p.DecidedBy != "approver@example.com" {
		t.Fatalf("approved = %+v", p)
	}
	e.assertNoSentinel()
}

func TestUIAuditFiltersAndStream(t *testing.T) {
	e := newUIEnv(t)
	e.uiWorld()
	b := e.browser()
	b.login(ownerEmail, ownerPass)
	_, page := b.get("/ui/audit?action=vault.create&vault=&agent=")
	if n := strings.Count(page, "<td>vault.create</td>"); n != 2 || strings.Contains(page, "<td>credential.set</td>") {
		t.Fatalf("action filter: %d vault.create rows\n%s", n, page)
	}
	resp, body := b.get("/ui/audit?decision=maybe")
	wantStatus(t, "bad filter", resp, body, http.StatusBadRequest)
	_, page = b.get("/ui/audit?limit=2")
	older := field(t, regexp.MustCompile(`href="(/ui/audit\?[^"]*cursor=[0-9]+[^"]*)"`), page)
	older = strings.ReplaceAll(older, "&amp;", "&")
	resp, body = b.get(older)
	wantStatus(t, "older page", resp, body, http.StatusOK)

	// the live view's stream takes the cookie session and the filters
	_, page = b.get("/ui/audit?action=vault.create")
	stream := strings.ReplaceAll(field(t, regexp.MustCompile(`data-stream="([^"]+)"`), page), "&amp;", "&")
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, _ := http.NewRequestWithContext(c, "GET", e.hs.URL+stream, nil)
	resp, err := b.c.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if _, err := e.c.SetCredential(ctx(), "dev", "K", []byte(sentinel)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CreateVault(ctx(), "live"); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	for i := 0; i < 100 && sc.Scan(); i++ {
		line := sc.Text()
		if strings.Contains(line, "credential.set") {
			t.Fatal("the stream ignores the action filter")
		}
		if strings.HasPrefix(line, "data: ") && strings.Contains(line, `"target":"live"`) {
			cancel()
			e.assertNoSentinel()
			return
		}
	}
	t.Fatalf("no vault.create row for live on the stream: %v", sc.Err())
}
