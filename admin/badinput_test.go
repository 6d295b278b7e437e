package admin

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
)

func TestServiceBadInput(t *testing.T) {
	e := newEnv(t, nil)
	e.setup()
	e.req("POST", "/vaults", `{"name":"v"}`)
	e.req("PUT", "/vaults/v/credentials/K", `{"value":"`+sentinel+`"}`)
	svc := func(host string) string {
		return `{"name":"s","host":"` + host + `","auth":{"kind":"bearer","credential":"K"}}`
	}
	for _, host := range []string{"", "*.com", "*", "a.*.example.com", "*.*.example.com", "api..example.com",
		"1.2.3.4", "[::1]", "localhost", "agent-vault.internal", "-api.example.com", "api_x.example.com",
		"api.example.com/path", "api.example.com:443", "*example.com", strings.Repeat("a", 64) + ".example.com"} {
		st, body := e.req("POST", "/vaults/v/services", svc(host))
		e.wantError(http.StatusBadRequest, api.CodeInvalid, st, body)
	}
	for _, tc := range []struct{ body, why string }{
		{`{"name":"s","host":"api.example.com","auth":{"kind":"magic","credential":"K"}}`, "unknown auth kind"},
		{`{"name":"s","host":"api.example.com","auth":{"kind":"bearer"}}`, "bearer without credential"},
		{`{"name":"s","host":"api.example.com","auth":{"kind":"none","credential":"K"}}`, "none with credential"},
		{`{"name":"s","host":"api.example.com","auth":{"kind":"header","credential":"K"}}`, "header without header name"},
		{`{"name":"s","host":"api.example.com","auth":{"kind":"header","header":"Host","credential":"K"}}`, "reserved header"},
		{`{"name":"s","host":"api.example.com","auth":{"kind":"placeholder","placeholder":"PH","in":["path"],"credential":"K"}}`, "short placeholder"},
		{`{"name":"s","host":"api.example.com","auth":{"kind":"placeholder","placeholder":"PLACEHOLDER","in":["cookie"],"credential":"K"}}`, "unknown place"},
		{`{"name":"s","host":"api.example.com","auth":{"kind":"placeholder","placeholder":"PLACEHOLDER","credential":"K"}}`, "placeholder without places"},
		{`{"name":"s","host":"api.example.com","port":70000,"auth":{"kind":"bearer","credential":"K"}}`, "port out of range"},
		{`{"name":"s","host":"api.example.com","path":"v1","auth":{"kind":"bearer","credential":"K"}}`, "relative path"},
		{`{"name":"s","host":"api.example.com","path":"/a/../b","auth":{"kind":"bearer","credential":"K"}}`, "dot-dot path"},
		{`{"name":"s","host":"api.example.com","methods":["FETCH"],"auth":{"kind":"bearer","credential":"K"}}`, "unknown method"},
		{`{"name":"bad name","host":"api.example.com","auth":{"kind":"bearer","credential":"K"}}`, "bad service name"},
		{`{"vault":"other","name":"s","host":"api.example.com","auth":{"kind":"bearer","credential":"K"}}`, "vault mismatch"},
		{`{"name":"s","host":"api.example.com","auth":{"kind":"basic","username":"a:b","credential":"K"}}`, "colon in username"},
	} {
		st, body := e.req("POST", "/vaults/v/services", tc.body)
		if st != http.StatusBadRequest {
			t.Errorf("%s: %d %s", tc.why, st, body)
		}
	}
	// the named credential must exist; the vault must exist
	st, body := e.req("POST", "/vaults/v/services", `{"name":"s","host":"api.example.com","auth":{"kind":"bearer","credential":"MISSING"}}`)
	e.wantError(http.StatusNotFound, api.CodeNotFound, st, body)
	st, body = e.req("POST", "/vaults/nope/services", svc("api.example.com"))
	e.wantError(http.StatusNotFound, api.CodeNotFound, st, body)
	st, body = e.req("GET", "/vaults/nope/services", "")
	e.wantError(http.StatusNotFound, api.CodeNotFound, st, body)
	// duplicates
	if st, body := e.req("POST", "/vaults/v/services", svc("api.example.com")); st != http.StatusCreated {
		t.Fatalf("add: %d %s", st, body)
	}
	st, body = e.req("POST", "/vaults/v/services", svc("other.example.com"))
	e.wantError(http.StatusConflict, api.CodeExists, st, body)
	st, body = e.req("DELETE", "/vaults/v/services/nope", "")
	e.wantError(http.StatusNotFound, api.CodeNotFound, st, body)
	st, body = e.req("DELETE", "/vaults/v/services/bad%20name", "")
	e.wantError(http.StatusBadRequest, api.CodeInvalid, st, body)
	if ss, _ := e.c.Services(ctx(), "v"); len(ss) != 1 {
		t.Fatalf("services = %+v", ss)
	}
}

func TestVaultAndCredentialBadInput(t *testing.T) {
	e := newEnv(t, nil)
	e.setup()
	if st, _ := e.req("POST", "/vaults", `{"name":"v"}`); st != http.StatusCreated {
		t.Fatal(st)
	}
	st, body := e.req("POST", "/vaults", `{"name":"v"}`)
	e.wantError(http.StatusConflict, api.CodeExists, st, body)
	for _, name := range []string{"-v", ".v", "v/w", strings.Repeat("v", 65), "v w", "ü"} {
		st, body := e.req("POST", "/vaults", `{"name":"`+name+`"}`)
		e.wantError(http.StatusBadRequest, api.CodeInvalid, st, body)
	}
	st, body = e.req("DELETE", "/vaults/nope", "")
	e.wantError(http.StatusNotFound, api.CodeNotFound, st, body)
	st, body = e.req("GET", "/vaults/nope/credentials", "")
	e.wantError(http.StatusNotFound, api.CodeNotFound, st, body)
	for _, tc := range []struct{ path, body string }{
		{"/vaults/v/credentials/K", `{"value":""}`},
		{"/vaults/v/credentials/K", `{}`},
		{"/vaults/v/credentials/K", `{"value":"a\u0000b"}`},
		{"/vaults/v/credentials/K", `{"value":"` + strings.Repeat("x", maxCredentialBytes+1) + `"}`},
		{"/vaults/v/credentials/-K", `{"value":"x"}`},
	} {
		st, body := e.req("PUT", tc.path, tc.body)
		e.wantError(http.StatusBadRequest, api.CodeInvalid, st, body)
	}
	st, body = e.req("DELETE", "/vaults/v/credentials/NOPE", "")
	e.wantError(http.StatusNotFound, api.CodeNotFound, st, body)
	if cs, _ := e.c.Credentials(ctx(), "v"); len(cs) != 0 {
		t.Fatalf("credentials = %+v", cs)
	}
}

func TestAgentBadInput(t *testing.T) {
	e := newEnv(t, nil)
	e.setup()
	e.req("POST", "/vaults", `{"name":"v"}`)
	e.req("POST", "/vaults", `{"name":"w"}`)
	for _, tc := range []struct{ body, why string }{
		{`{"name":"a","sources":["10.0.0.300/32"]}`, "bad address"},
		{`{"name":"a","sources":["10.0.0.0/33"]}`, "bad prefix length"},
		{`{"name":"a","sources":["example.com"]}`, "a name"},
		{`{"name":"a","sources":["0.0.0.0/0"]}`, "everyone (v4)"},
		{`{"name":"a","sources":["::/0"]}`, "everyone (v6)"},
		{`{"name":"a","sources":["10.0.0.1/32","10.0.0.1"]}`, "duplicate source"},
		{`{"name":"a","sources":["fe80::1%eth0/128"]}`, "zone"},
		{`{"name":"a","cgroup":"/"}`, "root cgroup"},
		{`{"name":"a","cgroup":"agents/../../etc"}`, "dot-dot cgroup"},
		{`{"name":"a","cgroup":"a\nb"}`, "newline in cgroup"},
		{`{"name":"a b"}`, "bad name"},
		{`{"name":""}`, "empty name"},
		{`{"name":"a","expires_at":"2000-01-01T00:00:00Z"}`, "expiry in the past"},
		{`{"name":"a","token":"chosen"}`, "client-chosen token"},
		{`{"name":"a","sources":"10.0.0.1/32"}`, "sources not a list"},
	} {
		st, body := e.req("POST", "/vaults/v/agents", tc.body)
		if st != http.StatusBadRequest {
			t.Errorf("%s: %d %s", tc.why, st, body)
		}
	}
	st, body := e.req("POST", "/vaults/nope/agents", `{"name":"a"}`)
	e.wantError(http.StatusNotFound, api.CodeNotFound, st, body)
	if st, body := e.req("POST", "/vaults/v/agents", `{"name":"a","sources":["10.0.0.7","fd00::/64"]}`); st != http.StatusCreated {
		t.Fatalf("create: %d %s", st, body)
	}
	// names are unique across vaults
	st, body = e.req("POST", "/vaults/w/agents", `{"name":"a"}`)
	e.wantError(http.StatusConflict, api.CodeExists, st, body)
	st, body = e.req("POST", "/agents/nope/revoke", "")
	e.wantError(http.StatusNotFound, api.CodeNotFound, st, body)
	st, body = e.req("DELETE", "/vaults/w/agents/a", "")
	e.wantError(http.StatusNotFound, api.CodeNotFound, st, body)
	as, err := e.c.Agents(ctx(), "v")
	if err != nil || len(as) != 1 || len(as[0].Sources) != 2 || as[0].Sources[0].String() != "10.0.0.7/32" {
		t.Fatalf("agents = %+v, %v", as, err)
	}
}

func TestAuditQueryBadInput(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SessionIdle = 24 * time.Hour })
	e.setup()
	for _, q := range []string{"decision=maybe", "limit=0", "limit=1001", "limit=x", "cursor=abc", "cursor=0",
		"since=yesterday", "since=-1h", "until=2026-13-01T00:00:00Z", "since=1h&until=2h", "colour=red", "vault=a&vault=b"} {
		st, body := e.req("GET", "/audit?"+q, "")
		e.wantError(http.StatusBadRequest, api.CodeInvalid, st, body)
	}
	for _, q := range []string{"decision=deny", "limit=1000", "since=1h", "since=2026-01-01T00:00:00Z&until=2027-01-01T00:00:00Z", "cursor=5"} {
		if st, body := e.req("GET", "/audit?"+q, ""); st != http.StatusOK {
			t.Errorf("%s: %d %s", q, st, body)
		}
	}
	// since filters relative to the server's clock
	e.clock.Advance(3 * 3600e9)
	e.req("POST", "/vaults", `{"name":"late"}`)
	p, err := e.c.Audit(ctx(), api.AuditFilter{Since: "1h"})
	if err != nil || len(p.Events) != 1 || p.Events[0].Action != "vault.create" {
		t.Fatalf("since 1h = %+v, %v", p, err)
	}
}
