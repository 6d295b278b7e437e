package admin

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/store"
)

func TestSetupRules(t *testing.T) {
	e := newEnv(t, nil)
	// before setup, a protected route says setup is needed
	st, body := e.req("GET", "/vaults", "")
	e.wantError(http.StatusUnauthorized, api.CodeSetupRequired, st, body)

	for _, tc := range []struct{ body, why string }{
		{`{"email":"owner@example.com","password":"short"}`, "password under 8 characters"},
		{`{"email":"not-an-email","password":"long enough pw"}`, "malformed email"},
		{`{"email":"Owner <owner@example.com>","password":"long enough pw"}`, "email with display name"},
		{`{"email":"","password":"long enough pw"}`, "empty email"},
	} {
		st, body := e.req("POST", "/setup", tc.body)
		if st != http.StatusBadRequest {
			t.Errorf("%s: %d %s", tc.why, st, body)
		}
	}
	e.setup()
	_, err := e.c.Setup(ctx(), "other@example.com", "another password")
	wantAPIError(t, err, http.StatusConflict, api.CodeSetupDone)
	if u, err := e.st.UserByEmail("other@example.com"); err == nil {
		t.Fatalf("second setup created a user: %+v", u)
	}
}

func TestLoginAndThrottle(t *testing.T) {
	e := newEnv(t, nil)
	e.setup()
	if _, err := e.c.Login(ctx(), "OWNER@example.com", ownerPass); err != nil {
		t.Fatalf("login with upper-case email: %v", err)
	}
	// wrong passwords: 5 failures are answered 401, then the email is
	// blocked (429 with Retry-After) even for the right password
	for i := 0; i < freeFailures; i++ {
		_, err := e.c.Login(ctx(), ownerEmail, "wrong password "+string(rune('a'+i)))
		wantAPIError(t, err, http.StatusUnauthorized, api.CodeUnauthorized)
	}
	_, err := e.c.Login(ctx(), ownerEmail, ownerPass)
	wantAPIError(t, err, http.StatusTooManyRequests, api.CodeRateLimited)
	if ae := err.(interface{ Error() string }); !strings.Contains(ae.Error(), "wait") {
		t.Fatalf("429 message %q does not say to wait", ae.Error())
	}
	st, _ := e.req("POST", "/login", `{"email":"owner@example.com","password":"`+ownerPass+`"}`)
	if st != http.StatusTooManyRequests {
		t.Fatalf("raw login while blocked: %d", st)
	}
	// the block ends after its delay; the right password then works and
	// clears the record
	e.clock.Advance(2 * time.Second)
	if _, err := e.c.Login(ctx(), ownerEmail, ownerPass); err != nil {
		t.Fatalf("login after the block: %v", err)
	}
	// unknown emails fail the same way and count against the client IP
	for i := 0; i < freeFailures; i++ {
		_, err := e.c.Login(ctx(), "nobody"+string(rune('a'+i))+"@example.com", ownerPass)
		wantAPIError(t, err, http.StatusUnauthorized, api.CodeUnauthorized)
	}
	_, err = e.c.Login(ctx(), "someone-else@example.com", "whatever pw")
	wantAPIError(t, err, http.StatusTooManyRequests, api.CodeRateLimited)

	rows, _, err := e.st.AuditList(store.AuditQuery{Action: "user.login", Decision: "deny", Limit: 100})
	if err != nil || len(rows) != 2*freeFailures {
		t.Fatalf("denied logins audited: %d rows, %v", len(rows), err)
	}
	if strings.Contains(e.logs.String(), "wrong password") {
		t.Fatal("a tried password reached the log")
	}
}

func TestLimiterBackoffDoubles(t *testing.T) {
	c := &fakeClock{t: time.Unix(1000, 0)}
	l := newLoginLimiter(c.Now)
	for i := 0; i < freeFailures-1; i++ {
		l.fail("k")
	}
	if w := l.blocked("k"); w != 0 {
		t.Fatalf("blocked after %d failures: %v", freeFailures-1, w)
	}
	var waits []time.Duration
	for i := 0; i < 4; i++ {
		l.fail("k")
		waits = append(waits, l.blocked("k"))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits %v, want %v", waits, want)
		}
	}
	for i := 0; i < 40; i++ {
		l.fail("k")
	}
	if w := l.blocked("k"); w != maxBlock {
		t.Fatalf("wait capped at %v, got %v", maxBlock, w)
	}
	if w := l.blocked("other"); w != 0 {
		t.Fatalf("another key is blocked: %v", w)
	}
	l.success("k")
	if w := l.blocked("k"); w != 0 {
		t.Fatalf("success did not clear: %v", w)
	}
}

func TestTokens(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SessionIdle = 24 * time.Hour })
	e.setup()
	good := e.token()
	for _, tc := range []struct{ header, why string }{
		{"", "no header"},
		{"Bearer", "no token"},
		{"Bearer avs_forged0000000000000000000000000000000000000", "forged token"},
		{"Basic " + good, "wrong scheme"},
		{"Bearer " + good + "x", "altered token"},
		{"Bearer " + strings.Repeat("a", 300), "oversized token"},
	} {
		st, body := e.req("GET", "/vaults", "", "Authorization: "+tc.header)
		if tc.header == "" {
			st, body = e.req("GET", "/vaults", "", "Authorization: ")
		}
		if st != http.StatusUnauthorized {
			t.Errorf("%s: %d %s", tc.why, st, body)
		}
	}
	if st, _ := e.req("GET", "/vaults", "", "Authorization: bearer "+good); st != http.StatusOK {
		t.Fatalf("lower-case scheme: %d", st)
	}
	// the session expires after 12 h
	e.clock.Advance(12*time.Hour - time.Second)
	if st, _ := e.req("GET", "/vaults", ""); st != http.StatusOK {
		t.Fatalf("session before expiry: %d", st)
	}
	e.clock.Advance(2 * time.Second)
	st, body := e.req("GET", "/vaults", "")
	e.wantError(http.StatusUnauthorized, api.CodeUnauthorized, st, body)
	// logging out twice: the second is unauthorized
	if _, err := e.c.Login(ctx(), ownerEmail, ownerPass); err != nil {
		t.Fatal(err)
	}
	if st, _ := e.req("POST", "/logout", ""); st != http.StatusNoContent {
		t.Fatalf("logout: %d", st)
	}
	st, body = e.req("DELETE", "/logout", "")
	e.wantError(http.StatusUnauthorized, api.CodeUnauthorized, st, body)
}

func TestHostCheck(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.AllowedHosts = []string{"vault.corp.example"} })
	e.setup()
	port := e.hs.URL[strings.LastIndex(e.hs.URL, ":")+1:]
	for _, h := range []string{"127.0.0.1:" + port, "localhost:" + port, "LOCALHOST.", "[::1]:" + port, "127.0.0.1", "vault.corp.example:" + port} {
		if st, body := e.req("GET", "/vaults", "", "Host: "+h); st != http.StatusOK {
			t.Errorf("Host %q: %d %s", h, st, body)
		}
	}
	for _, h := range []string{"evil.example.com", "evil.example.com:" + port, "127.0.0.1.evil.example", "localhost.evil.example", "10.9.9.9"} {
		st, body := e.req("GET", "/health", "", "Host: "+h)
		e.wantError(http.StatusForbidden, api.CodeBadHost, st, body)
		// the check runs before authentication and before any effect
		st, body = e.req("POST", "/vaults", `{"name":"rebound"}`, "Host: "+h)
		e.wantError(http.StatusForbidden, api.CodeBadHost, st, body)
	}
	if vs, _ := e.c.Vaults(ctx()); len(vs) != 0 {
		t.Fatalf("a request with a foreign Host created %+v", vs)
	}
}

func TestOriginCheck(t *testing.T) {
	e := newEnv(t, nil)
	e.setup()
	self := e.hs.URL // http://127.0.0.1:PORT
	for _, h := range [][]string{
		{"Origin: http://evil.example.com"},
		{"Origin: null"},
		{"Origin: " + strings.Replace(self, "http:", "ftp:", 1)},
		{"Origin: http://127.0.0.1:1"},
		{"Sec-Fetch-Site: cross-site"},
		{"Sec-Fetch-Site: same-site"},
	} {
		st, body := e.req("POST", "/vaults", `{"name":"x"}`, h...)
		e.wantError(http.StatusForbidden, api.CodeBadOrigin, st, body)
		st, body = e.req("DELETE", "/logout", "", h...)
		e.wantError(http.StatusForbidden, api.CodeBadOrigin, st, body)
	}
	// reads are not state-changing; same-origin writes pass
	if st, _ := e.req("GET", "/vaults", "", "Origin: http://evil.example.com"); st != http.StatusOK {
		t.Fatalf("GET with a foreign origin: %d", st)
	}
	if st, body := e.req("POST", "/vaults", `{"name":"ok"}`, "Origin: "+self, "Sec-Fetch-Site: same-origin"); st != http.StatusCreated {
		t.Fatalf("same-origin POST: %d %s", st, body)
	}
	if vs, _ := e.c.Vaults(ctx()); len(vs) != 1 {
		t.Fatalf("vaults = %+v", vs)
	}
}

func TestBodies(t *testing.T) {
	e := newEnv(t, nil)
	e.setup()
	big := `{"name":"` + strings.Repeat("a", MaxBodyBytes) + `"}`
	st, body := e.req("POST", "/vaults", big)
	e.wantError(http.StatusRequestEntityTooLarge, api.CodeTooLarge, st, body)
	st, body = e.req("PUT", "/vaults/v/credentials/K", `{"value":"`+strings.Repeat("s", MaxBodyBytes)+`"}`)
	e.wantError(http.StatusRequestEntityTooLarge, api.CodeTooLarge, st, body)
	for _, tc := range []struct {
		body, ct, code string
		status         int
	}{
		{`{"name":"v","color":"red"}`, "application/json", api.CodeBadRequest, 400},
		{`{"name":"v"} {"name":"w"}`, "application/json", api.CodeBadRequest, 400},
		{`{"name":`, "application/json", api.CodeBadRequest, 400},
		{`{"name":42}`, "application/json", api.CodeBadRequest, 400},
		{`[]`, "application/json", api.CodeBadRequest, 400},
		{`{"name":"v"}`, "text/plain", api.CodeUnsupportedType, 415},
		{`{"name":"v"}`, "application/x-www-form-urlencoded", api.CodeUnsupportedType, 415},
		{`{"name":"bad name"}`, "application/json", api.CodeInvalid, 400},
		{`{"name":""}`, "application/json", api.CodeInvalid, 400},
	} {
		st, body := e.req("POST", "/vaults", tc.body, "Content-Type: "+tc.ct)
		e.wantError(tc.status, tc.code, st, body)
	}
	st, body = e.req("POST", "/vaults", " ", "Content-Type: application/json")
	e.wantError(http.StatusBadRequest, api.CodeBadRequest, st, body)
	if vs, _ := e.c.Vaults(ctx()); len(vs) != 0 {
		t.Fatalf("bad bodies created %+v", vs)
	}
}

func TestPasswordHash(t *testing.T) {
	h, err := hashPassword("secret password", tinyPassword)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=64,t=1,p=1$") || strings.Contains(h, "secret password") {
		t.Fatalf("hash %q", h)
	}
	if ok, err := verifyPassword("secret password", h); !ok || err != nil {
		t.Fatalf("verify right = %v, %v", ok, err)
	}
	if ok, err := verifyPassword("secret passworD", h); ok || err != nil {
		t.Fatalf("verify wrong = %v, %v", ok, err)
	}
	h2, _ := hashPassword("secret password", tinyPassword)
	if h2 == h {
		t.Fatal("two hashes of one password are equal: no salt")
	}
	for _, bad := range []string{"", "plain", "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=18$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		"$argon2id$v=19$m=64,t=1,p=1$!!$aGFzaGhhc2hoYXNoaGFzaA"} {
		if ok, err := verifyPassword("x", bad); ok || err == nil {
			t.Errorf("malformed hash %q accepted: %v %v", bad, ok, err)
		}
	}
}

// A password typed into the email field (a common slip) reaches neither
// the log nor the audit row of the failed login.
func TestLoginPasswordInEmailFieldNotRecorded(t *testing.T) {
	e := newEnv(t, nil)
	e.setup()
	// the second and third pass as email addresses
	slips := []string{"correct-horse-SENTINEL-7731", "P@ssw0rd-SENTINEL-7732", "hunter2-SENTINEL-7733@corp"}
	for _, slip := range slips {
		_, err := e.c.Login(ctx(), slip, "anything at all")
		wantAPIError(t, err, http.StatusUnauthorized, api.CodeUnauthorized)
	}
	rows, _, err := e.st.AuditList(store.AuditQuery{Action: "user.login", Decision: "deny", Limit: 10})
	if err != nil || len(rows) != len(slips) {
		t.Fatalf("denied logins audited: %d rows, %v", len(rows), err)
	}
	for _, slip := range slips {
		for _, row := range rows {
			if strings.Contains(row.Actor.Name, slip) || strings.Contains(row.Target, slip) {
				t.Fatalf("the audit row holds what was typed as an email: %+v", row)
			}
		}
		if strings.Contains(e.logs.String(), slip) {
			t.Fatalf("what was typed as an email (%s) reached the log", slip)
		}
	}
}
