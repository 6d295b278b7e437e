package mitm

import (
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/agentvault/agent-vault/policy"
)

// Every auth kind, through the real mitm/inject: what the upstream received,
// and a scrubbed echo for the agent.
func TestAuthKinds(t *testing.T) {
	e := newEnv(t)
	e.setPolicy(func(in *policy.Input) {
		in.Services = append(in.Services,
			policy.Service{Vault: "v1", Name: "basic", Host: "basic.example.test", Auth: policy.Auth{Kind: policy.AuthBasic, Credential: "api-key", Username: "bot"}},
			policy.Service{Vault: "v1", Name: "hdr", Host: "hdr.example.test", Auth: policy.Auth{Kind: policy.AuthHeader, Credential: "api-key", Header: "X-Api-Key", Prefix: "Key "}},
			policy.Service{Vault: "v1", Name: "ph", Host: "ph.example.test", Auth: policy.Auth{Kind: policy.AuthPlaceholder, Credential: "api-key",
				Placeholder: placeholder, Header: "X-Key", In: []policy.Location{policy.InPath, policy.InQuery, policy.InHeader, policy.InBody}}},
			policy.Service{Vault: "v1", Name: "crlf", Host: "crlf.example.test", Auth: policy.Auth{Kind: policy.AuthBearer, Credential: "crlf"}},
		)
	})
	c := e.transparentClient(true)
	do := func(method, host, path, body string, hdr map[string]string) (*http.Response, string) {
		req, _ := http.NewRequest(method, e.url(host, path), strings.NewReader(body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), sentinel) {
			t.Errorf("%s: the secret reached the agent: %s", host, b)
		}
		return resp, string(b)
	}
	last := func() received { g := e.up.received(); return g[len(g)-1] }

	do("GET", "basic.example.test", "/echo", "", map[string]string{"Authorization": "Basic " + placeholder})
	if got, want := last().Header.Get("Authorization"), "Basic "+base64.StdEncoding.EncodeToString([]byte("bot:"+sentinel)); got != want {
		t.Errorf("basic: upstream got %q", got)
	}
	do("GET", "hdr.example.test", "/echo", "", map[string]string{"X-Api-Key": placeholder, "Authorization": "Bearer agent-own"})
	if r := last(); r.Header.Get("X-Api-Key") != "Key "+sentinel || r.Header.Get("Authorization") != "" {
		t.Errorf("header: upstream got %v", r.Header)
	}
	do("POST", "ph.example.test", "/v1/"+placeholder+"/x?key="+placeholder, `{"k":"`+placeholder+`"}`,
		map[string]string{"X-Key": placeholder, "Content-Type": "application/json"})
	r := last()
	if r.Path != "/v1/"+sentinel+"/x" || r.Query != "key="+sentinel || r.Header.Get("X-Key") != sentinel || r.Body != `{"k":"`+sentinel+`"}` {
		t.Errorf("placeholder: upstream got %+v", r)
	}
	n := len(e.up.received())
	resp, _ := do("GET", "crlf.example.test", "/echo", "", nil)
	if resp.StatusCode != 502 || resp.Header.Get(ErrorHeader) != CodeInjectionFailed {
		t.Errorf("a credential with CR/LF: %d %s", resp.StatusCode, resp.Header.Get(ErrorHeader))
	}
	if len(e.up.received()) != n {
		t.Error("a request whose credential could not be attached was sent")
	}
	// auth none: the agent's own Authorization is stripped too (mitm/inject).
	do("GET", "open.example.test", "/echo", "", map[string]string{"Authorization": "Bearer agent-own"})
	if last().Header.Get("Authorization") != "" {
		t.Errorf("auth none: the agent's Authorization passed")
	}
}
