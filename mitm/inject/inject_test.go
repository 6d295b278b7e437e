package inject_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/agentvault/agent-vault/mitm/inject"
	"github.com/agentvault/agent-vault/policy"
)

// The secrets: a plain one and one with every character some escaping
// changes.
var (
	plain = []byte("SENTINEL_sk_live_0123456789")
	nasty = []byte(`SENT"IN\EL &=/%+?#;é☃` + "\u2028")
	ph    = "__AGENT_VAULT_PLACEHOLDER__"
)

// received is what the upstream saw.
type received struct {
	Path, RawPath, RawQuery string
	Query                   url.Values
	Header                  http.Header
	Body                    []byte
	ContentLength           int64
	TransferEncoding        []string
}

// upstream is a real HTTP server recording the last request.
type upstream struct {
	srv  *httptest.Server
	mu   sync.Mutex
	last received
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.last = received{r.URL.Path, r.URL.RawPath, r.URL.RawQuery, r.URL.Query(), r.Header.Clone(), body, r.ContentLength, r.TransferEncoding}
		u.mu.Unlock()
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// send forwards an inbound (server-side) request the way a reverse proxy
// does and returns what the upstream received.
func (u *upstream) send(t *testing.T, in *http.Request) received {
	t.Helper()
	out := in.Clone(in.Context())
	out.RequestURI = ""
	target, _ := url.Parse(u.srv.URL)
	out.URL.Scheme, out.URL.Host, out.Host = target.Scheme, target.Host, target.Host
	res, err := u.srv.Client().Do(out)
	if err != nil {
		t.Fatalf("forward: %v", err)
	}
	res.Body.Close()
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last
}

// inbound builds a request as the broker's server receives it.
func inbound(method, target, contentType, body string) *http.Request {
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(method, target, nil)
	} else {
		r = httptest.NewRequest(method, target, strings.NewReader(body))
	}
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	r.Header.Set("Authorization", "Bearer agent-own-token")
	r.Header.Set("Proxy-Authorization", "Basic YWdlbnQ6dG9rZW4=")
	r.Header.Set("Proxy-Connection", "keep-alive")
	r.Header["proxy-custom"] = []string{"x"} // a non-canonical spelling
	r.Header.Set("X-Other", "keep me "+ph)
	return r
}

func svc(a policy.Auth) *policy.Service {
	return &policy.Service{Vault: "v", Name: "api", Host: "api.example.com", Auth: a}
}

func noProxyHeaders(t *testing.T, h http.Header) {
	t.Helper()
	for k := range h {
		if strings.HasPrefix(strings.ToLower(k), "proxy-") {
			t.Errorf("agent's %s reached the upstream", k)
		}
	}
}

func TestHeaderKinds(t *testing.T) {
	up := newUpstream(t)
	for _, secret := range [][]byte{plain, []byte(`s3cr"et\&=/%+ é☃`)} {
		s := string(secret)
		basic := base64.StdEncoding.EncodeToString([]byte("bot:" + s))
		cases := []struct {
			name    string
			auth    policy.Auth
			check   func(t *testing.T, r received)
			forms   []string
			sendKey bool // agent also sends the service's own header
		}{
			{"bearer", policy.Auth{Kind: policy.AuthBearer, Credential: "k"}, func(t *testing.T, r received) {
				if got := r.Header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+s {
					t.Errorf("Authorization %q", got)
				}
			}, []string{s}, false},
			{"header", policy.Auth{Kind: policy.AuthHeader, Credential: "k", Header: "X-Api-Key", Prefix: "Token "}, func(t *testing.T, r received) {
				if got := r.Header.Values("X-Api-Key"); len(got) != 1 || got[0] != "Token "+s {
					t.Errorf("X-Api-Key %q", got)
				}
				if r.Header.Get("Authorization") != "" {
					t.Error("agent's Authorization reached the upstream")
				}
			}, []string{s}, true},
			{"basic", policy.Auth{Kind: policy.AuthBasic, Credential: "k", Username: "bot"}, func(t *testing.T, r received) {
				if got := r.Header.Values("Authorization"); len(got) != 1 || got[0] != "Basic "+basic {
					t.Errorf("Authorization %q", got)
				}
			}, []string{s, basic}, false},
			{"none", policy.Auth{Kind: policy.AuthNone}, func(t *testing.T, r received) {
				if r.Header.Get("Authorization") != "" {
					t.Error("agent's Authorization reached the upstream")
				}
			}, nil, false},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				req := inbound("GET", "/v1/x?q=1", "", "")
				if c.sendKey {
					req.Header.Set("X-Api-Key", "agent-value")
					req.Header["x-api-key"] = []string{"agent-lower"}
				}
				got, err := inject.Apply(req, svc(c.auth), secret)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.EqualFunc(got, c.forms, func(a []byte, b string) bool { return string(a) == b }) {
					t.Errorf("injected %q, want %q", got, c.forms)
				}
				r := up.send(t, req)
				c.check(t, r)
				noProxyHeaders(t, r.Header)
				if r.Header.Get("X-Other") != "keep me "+ph {
					t.Error("an unrelated header changed")
				}
				if strings.Contains(strings.ToLower(strings.Join(r.Header.Values("X-Api-Key"), ",")), "agent") {
					t.Error("agent's own X-Api-Key reached the upstream")
				}
			})
		}
	}
}

func TestHeaderKindsRefuseControlBytes(t *testing.T) {
	for _, bad := range [][]byte{[]byte("SENTINEL\r\nX-Evil: 1"), []byte("SENTINEL\nx"), []byte("SENTINEL\x00"), []byte("SENTINEL\x7f")} {
		for _, a := range []policy.Auth{
			{Kind: policy.AuthBearer, Credential: "k"},
			{Kind: policy.AuthHeader, Credential: "k", Header: "X-Api-Key"},
			{Kind: policy.AuthBasic, Credential: "k", Username: "u"},
			{Kind: policy.AuthPlaceholder, Credential: "k", Placeholder: ph, Header: "Authorization", In: []policy.Location{policy.InHeader}},
		} {
			req := inbound("GET", "/", "", "")
			req.Header.Set("Authorization", "Bearer "+ph)
			before := req.Header.Clone()
			_, err := inject.Apply(req, svc(a), bad)
			if !errors.Is(err, inject.ErrHeaderUnsafe) {
				t.Errorf("%s: error %v, want ErrHeaderUnsafe", a.Kind, err)
				continue
			}
			if strings.Contains(err.Error(), "SENTINEL") {
				t.Errorf("%s: error carries the secret: %v", a.Kind, err)
			}
			for k, v := range req.Header {
				if strings.Contains(strings.Join(v, ""), "SENTINEL") {
					t.Errorf("%s: %s set although refused", a.Kind, k)
				}
			}
			if len(req.Header) != len(before) {
				t.Errorf("%s: headers changed on error", a.Kind)
			}
		}
	}
	_, err := inject.Apply(inbound("GET", "/", "", ""), svc(policy.Auth{Kind: policy.AuthBearer}), nil)
	if !errors.Is(err, inject.ErrEmptySecret) {
		t.Errorf("empty secret: %v", err)
	}
	_, err = inject.Apply(inbound("GET", "/", "", ""), nil, plain)
	if !errors.Is(err, inject.ErrNoService) {
		t.Errorf("nil service: %v", err)
	}
	_, err = inject.Apply(inbound("GET", "/", "", ""), svc(policy.Auth{Kind: "sigv4"}), plain)
	if err == nil || strings.Contains(err.Error(), string(plain)) {
		t.Errorf("unknown kind: %v", err)
	}
}

func TestStripAgentAuth(t *testing.T) {
	h := http.Header{"Authorization": {"x"}, "Proxy-Authorization": {"y"}, "proxy-foo": {"z"}, "X-Keep": {"k"}}
	inject.StripAgentAuth(h, nil)
	if len(h) != 1 || h.Get("X-Keep") != "k" {
		t.Errorf("left %v", h)
	}
	// a placeholder swapped in Authorization keeps Authorization
	h = http.Header{"Authorization": {"Bearer " + ph}, "Proxy-Authorization": {"y"}}
	inject.StripAgentAuth(h, svc(policy.Auth{Kind: policy.AuthPlaceholder, Placeholder: ph, Header: "authorization", In: []policy.Location{policy.InHeader}}))
	if h.Get("Authorization") != "Bearer "+ph || len(h) != 1 {
		t.Errorf("left %v", h)
	}
	// ... but not when the placeholder lives elsewhere
	h = http.Header{"Authorization": {"Bearer " + ph}}
	inject.StripAgentAuth(h, svc(policy.Auth{Kind: policy.AuthPlaceholder, Placeholder: ph, In: []policy.Location{policy.InQuery}}))
	if len(h) != 0 {
		t.Errorf("left %v", h)
	}
}

func TestBodySizeBound(t *testing.T) {
	a := policy.Auth{Kind: policy.AuthPlaceholder, Credential: "k", Placeholder: ph, In: []policy.Location{policy.InBody}}
	big := `{"k":"` + ph + `","pad":"` + strings.Repeat("x", inject.MaxBodyBytes) + `"}`
	// declared length
	req := inbound("POST", "/", "application/json", big)
	if _, err := inject.Apply(req, svc(a), plain); !errors.Is(err, inject.ErrBodyTooLarge) {
		t.Errorf("declared length: %v", err)
	}
	// unknown length (chunked)
	req = inbound("POST", "/", "application/json", "")
	req.Body, req.ContentLength = io.NopCloser(strings.NewReader(big)), -1
	_, err := inject.Apply(req, svc(a), plain)
	if !errors.Is(err, inject.ErrBodyTooLarge) {
		t.Errorf("chunked: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), string(plain)) {
		t.Error("error carries the secret")
	}
	// exactly at the bound is fine
	body := `{"k":"` + ph + `","pad":"`
	body += strings.Repeat("x", inject.MaxBodyBytes-len(body)-2) + `"}`
	req = inbound("POST", "/", "application/json", body)
	if _, err := inject.Apply(req, svc(a), plain); err != nil {
		t.Errorf("at the bound: %v", err)
	}
	if req.ContentLength != int64(len(body)-len(ph)+len(plain)) {
		t.Errorf("Content-Length %d", req.ContentLength)
	}
}

func TestJSONEscapedPlaceholderFromAgent(t *testing.T) {
	up := newUpstream(t)
	placeholder := "<AV_KEY>"
	doc, _ := json.Marshal(map[string]string{"key": placeholder}) // Go writes \u003cAV_KEY\u003e
	if bytes.Contains(doc, []byte(placeholder)) {
		t.Fatal("expected an escaped placeholder")
	}
	a := policy.Auth{Kind: policy.AuthPlaceholder, Credential: "k", Placeholder: placeholder, In: []policy.Location{policy.InBody}}
	req := inbound("POST", "/", "application/json", string(doc))
	if _, err := inject.Apply(req, svc(a), nasty); err != nil {
		t.Fatal(err)
	}
	r := up.send(t, req)
	var got map[string]string
	if err := json.Unmarshal(r.Body, &got); err != nil || got["key"] != string(nasty) {
		t.Errorf("upstream decoded %q (%v)", got["key"], err)
	}
}
