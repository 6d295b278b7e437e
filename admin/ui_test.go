package admin

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/store"
)

// browser is a cookie-keeping HTTP client that does not follow redirects,
// standing in for a user's browser. Every response it gets is checked for
// the UI's security headers and kept for the sentinel scan.
type browser struct {
	e    *env
	c    *http.Client
	csrf string
}

// newUIEnv is newEnv with the clock at the real time: the cookie jar drops
// cookies whose expiry (set from the server's clock) is in its past.
func newUIEnv(t *testing.T) *env {
	e := newEnv(t, nil)
	e.clock.Advance(time.Until(e.clock.Now()) * -1)
	return e
}

func (e *env) browser() *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return &browser{e: e, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

var uiSecurityHeaders = map[string]string{
	"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; form-action 'self'",
	"X-Frame-Options":         "DENY",
	"Referrer-Policy":         "no-referrer",
	"X-Content-Type-Options":  "nosniff",
	"Cache-Control":           "no-store",
}

func (b *browser) do(r *http.Request) (*http.Response, string) {
	t := b.e.t
	t.Helper()
	resp, err := b.c.Do(r)
	if err != nil {
		t.Fatalf("%s %s: %v", r.Method, r.URL.Path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	b.e.seen.Write(body)
	if !strings.HasPrefix(r.URL.Path, api.Prefix) {
		for k, want := range uiSecurityHeaders {
			if got := resp.Header.Get(k); !strings.HasPrefix(got, want) {
				t.Errorf("%s %s: header %s = %q, want %q", r.Method, r.URL.Path, k, got, want)
			}
		}
	}
	return resp, string(body)
}

func (b *browser) get(path string) (*http.Response, string) {
	b.e.t.Helper()
	r, err := http.NewRequest("GET", b.e.hs.URL+path, nil)
	if err != nil {
		b.e.t.Fatal(err)
	}
	return b.do(r)
}

// post sends a form as a browser does from a page of the UI: its
// Referrer-Policy no-referrer makes the browser send "Origin: null", and
// Sec-Fetch-Site says same-origin.
func (b *browser) post(path string, form url.Values) (*http.Response, string) {
	b.e.t.Helper()
	r, err := http.NewRequest("POST", b.e.hs.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		b.e.t.Fatal(err)
	}
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r.Header.Set("Origin", "null")
	r.Header.Set("Sec-Fetch-Site", "same-origin")
	return b.do(r)
}

var (
	reCSRF      = regexp.MustCompile(`name="csrf" value="([0-9a-f]{64})"`)
	reFormToken = regexp.MustCompile(`name="form_token" value="([0-9a-f]{64})"`)
)

func field(t *testing.T, re *regexp.Regexp, body string) string {
	t.Helper()
	m := re.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no match for %s in page:\n%s", re, body)
	}
	return m[1]
}

// login logs in through the login form and remembers the CSRF token the
// pages carry.
func (b *browser) login(email, pass string) {
	t := b.e.t
	t.Helper()
	_, page := b.get("/ui/login")
	resp, body := b.post("/ui/login", url.Values{"email": {email}, "password": {pass}, "form_token": {field(t, reFormToken, page)}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/" {
		t.Fatalf("login as %s: %d %s", email, resp.StatusCode, body)
	}
	_, page = b.get("/ui/")
	b.csrf = field(t, reCSRF, page)
}

func wantStatus(t *testing.T, what string, resp *http.Response, body string, status int) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s: status %d, want %d; body:\n%s", what, resp.StatusCode, status, body)
	}
}

func TestUILoginAndLogout(t *testing.T) {
	e := newUIEnv(t)
	b := e.browser()
	resp, _ := b.get("/")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/" {
		t.Fatalf("GET / = %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	_, page := b.get("/ui/login")
	if !strings.Contains(page, "agent-vault setup") {
		t.Fatal("the login page before setup does not say to run setup")
	}
	e.setup()
	resp, _ = b.get("/ui/")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/login" {
		t.Fatalf("GET /ui/ without a session = %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	// a bearer token is not a UI session
	r, _ := http.NewRequest("GET", e.hs.URL+"/ui/", nil)
	r.Header.Set("Authorization", "Bearer "+e.token())
	if resp, _ := b.do(r); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("GET /ui/ with a bearer token = %d, want a redirect to the login page", resp.StatusCode)
	}

	_, page = b.get("/ui/login")
	tok := field(t, reFormToken, page)
	// without the form's token (a login forged by another page)
	resp, body := b.post("/ui/login", url.Values{"email": {ownerEmail}, "password": {ownerPass}})
	wantStatus(t, "login without the form token", resp, body, http.StatusForbidden)
	_, page = b.get("/ui/login")
	tok = field(t, reFormToken, page)
	resp, body = b.post("/ui/login", url.Values{"email": {ownerEmail}, "password": {"wrong password 3f9a"}, "form_token": {tok}})
	wantStatus(t, "wrong password", resp, body, http.StatusUnauthorized)
	if !strings.Contains(body, "wrong email or password") || strings.Contains(body, "wrong password 3f9a") {
		t.Fatalf("wrong password page:\n%s", body)
	}
	for _, c := range resp.Cookies() {
		if c.Name == api.SessionCookie {
			t.Fatal("a failed login set a session cookie")
		}
	}
	tok = field(t, reFormToken, body)
	resp, body = b.post("/ui/login", url.Values{"email": {ownerEmail}, "password": {ownerPass}, "form_token": {tok}})
	wantStatus(t, "login", resp, body, http.StatusSeeOther)
	var sess *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == api.SessionCookie {
			sess = c
		}
	}
	if sess == nil || !sess.HttpOnly || sess.SameSite != http.SameSiteStrictMode || sess.Path != "/" {
		t.Fatalf("session cookie = %+v", sess)
	}
	if strings.Contains(resp.Header.Get("Location"), sess.Value) || strings.Contains(body, sess.Value) {
		t.Fatal("the session token is in the redirect or the body")
	}
	resp, page = b.get("/ui/")
	wantStatus(t, "overview", resp, page, http.StatusOK)
	if !strings.Contains(page, ownerEmail) || !strings.Contains(page, "Log out") {
		t.Fatalf("overview does not show the user:\n%s", page)
	}
	csrf := field(t, reCSRF, page)
	if strings.Contains(page, sess.Value) {
		t.Fatal("a page carries the session token")
	}

	// logout needs the CSRF field
	resp, body = b.post("/ui/logout", url.Values{})
	wantStatus(t, "logout without CSRF", resp, body, http.StatusForbidden)
	if resp, _ := b.get("/ui/"); resp.StatusCode != http.StatusOK {
		t.Fatal("a refused logout ended the session")
	}
	resp, body = b.post("/ui/logout", url.Values{"csrf": {csrf}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/login?done=logout" {
		t.Fatalf("logout = %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	// the session is gone on the server, not only in this browser
	r, _ = http.NewRequest("GET", e.hs.URL+"/ui/", nil)
	r.AddCookie(sess)
	if resp, _ := b.do(r); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("the old cookie still opens a page: %d", resp.StatusCode)
	}
	if rows, _, err := e.st.AuditList(store.AuditQuery{Action: "user.logout"}); err != nil || len(rows) != 1 {
		t.Fatalf("logout rows = %v, %v", rows, err)
	}
}

func TestUIStaticAndNotFound(t *testing.T) {
	e := newUIEnv(t)
	b := e.browser()
	for file, ct := range map[string]string{"ui.css": "text/css", "ui.js": "text/javascript", "favicon.svg": "image/svg+xml"} {
		resp, body := b.get("/ui/static/" + file)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), ct) || len(body) < 100 {
			t.Errorf("%s: %d %s %d bytes", file, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
		}
	}
	for _, p := range []string{"/ui/static/base.html", "/ui/static/..%2ftemplates%2fbase.html", "/ui/nope", "/ui/vaults/x/y"} {
		resp, body := b.get(p)
		if resp.StatusCode != http.StatusNotFound || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Errorf("GET %s = %d %s", p, resp.StatusCode, body)
		}
	}
	if resp, _ := b.get("/ui"); resp.StatusCode/100 != 3 || resp.Header.Get("Location") != "/ui/" {
		t.Errorf("GET /ui = %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	// the Host check guards the UI too (DNS rebinding)
	r, _ := http.NewRequest("GET", e.hs.URL+"/ui/login", nil)
	r.Host = "evil.example.com"
	if resp, _ := b.do(r); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("foreign Host = %d", resp.StatusCode)
	}
}

const hostileReason = `<script>alert("x")</script> & <img src=x onerror=alert(1)>`

// uiWorld: vaults prod and dev, agents bot (prod) and devbot (dev), a
// service and a credential holding the sentinel in prod, and a pending
// proposal of bot with a hostile reason. It returns bot's token.
func (e *env) uiWorld() string {
	e.t.Helper()
	tok := e.world()
	if _, err := e.c.SetCredential(ctx(), "prod", "STRIPE_KEY", []byte(sentinel)); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.c.AddService(ctx(), policy.Service{Vault: "prod", Name: "stripe", Host: "api.stripe.com",
		Auth: policy.Auth{Kind: policy.AuthBearer, Credential: "STRIPE_KEY"}}); err != nil {
		e.t.Fatal(err)
	}
	p := ghProposal("api.github.com")
	p.Reason = hostileReason
	if _, err := e.as(tok).CreateProposal(ctx(), p); err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// proposalForm finds the approve form of proposal id and returns its hash.
func proposalHash(t *testing.T, page, id string) string {
	t.Helper()
	re := regexp.MustCompile(`action="/ui/proposals/` + id + `/approve"[^>]*>\s*<input type="hidden" name="csrf" value="[0-9a-f]+">\s*<input type="hidden" name="hash" value="([0-9a-f]{64})">`)
	return field(t, re, page)
}

func TestUIPagesEscapeAndHideValues(t *testing.T) {
	e := newUIEnv(t)
	e.uiWorld()
	b := e.browser()
	b.login(ownerEmail, ownerPass)

	_, page := b.get("/ui/")
	for _, want := range []string{`href="/ui/vaults/prod"`, `href="/ui/vaults/dev"`, `<span class="badge">1</span>`} {
		if !strings.Contains(page, want) {
			t.Errorf("overview lacks %s", want)
		}
	}
	resp, page := b.get("/ui/vaults/prod")
	wantStatus(t, "vault page", resp, page, http.StatusOK)
	for _, want := range []string{"stripe", "api.stripe.com", "STRIPE_KEY", ">bot<", "Revoke", "Set value", `type="password" name="value"`} {
		if !strings.Contains(page, want) {
			t.Errorf("vault page lacks %q", want)
		}
	}
	if strings.Contains(page, "devbot") {
		t.Error("the prod page lists dev's agent")
	}
	resp, page = b.get("/ui/proposals")
	wantStatus(t, "proposals page", resp, page, http.StatusOK)
	if strings.Contains(page, hostileReason) || strings.Contains(page, `<img`) || strings.Count(page, "<script") != 1 {
		t.Fatalf("the hostile reason is not escaped:\n%s", page)
	}
	if !strings.Contains(page, `&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;`) {
		t.Fatalf("the reason is not shown escaped:\n%s", page)
	}
	if !strings.Contains(page, "GH_TOKEN") || !strings.Contains(page, "api.github.com") {
		t.Fatal("the proposal's service is not shown")
	}
	resp, page = b.get("/ui/vaults/nope")
	wantStatus(t, "missing vault", resp, page, http.StatusNotFound)
	resp, page = b.get("/ui/vaults/bad%3Cname")
	wantStatus(t, "bad vault name", resp, page, http.StatusBadRequest)
	if strings.Contains(page, "bad<name") {
		t.Fatal("a bad vault name is echoed unescaped")
	}
	resp, page = b.get("/ui/audit")
	wantStatus(t, "audit page", resp, page, http.StatusOK)
	for _, want := range []string{"vault.create", "credential.set", "proposal.create", `data-stream="/api/v1/audit/stream?after=`} {
		if !strings.Contains(page, want) {
			t.Errorf("audit page lacks %q", want)
		}
	}
	// no page carries inline script or style (the CSP would block them)
	for _, p := range []string{"/ui/", "/ui/vaults/prod", "/ui/proposals", "/ui/audit", "/ui/login"} {
		_, page := b.get(p)
		if strings.Contains(page, "style=") || strings.Contains(page, "<style") ||
			strings.Count(page, "<script") != strings.Count(page, `<script src="/ui/static/ui.js" defer></script>`) {
			t.Errorf("%s has inline script or style", p)
		}
	}
	e.assertNoSentinel()
}
