package inject_test

import (
	"encoding/json"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/agentvault/agent-vault/mitm/inject"
	"github.com/agentvault/agent-vault/policy"
)

func placeholderAuth(in ...policy.Location) policy.Auth {
	return policy.Auth{Kind: policy.AuthPlaceholder, Credential: "k", Placeholder: ph, Header: "Authorization", In: in}
}

// TestPlaceholderPlaces swaps the placeholder in each place, with a plain
// and a nasty secret, and checks what a real upstream decoded.
func TestPlaceholderPlaces(t *testing.T) {
	up := newUpstream(t)
	for _, secret := range [][]byte{plain, nasty} {
		s := string(secret)
		cases := []struct {
			name            string
			in              []policy.Location
			fields          []string
			method, target  string
			ctype, body     string
			check           func(t *testing.T, r received)
			wantForms       []string
			placeholderLeft []string // where the agent's placeholder must stay
		}{
			{
				name: "path", in: []policy.Location{policy.InPath}, method: "GET",
				target: "/v1/" + ph + "/items/pre-" + ph + "?q=" + ph,
				check: func(t *testing.T, r received) {
					if r.Path != "/v1/"+s+"/items/pre-"+s {
						t.Errorf("path %q", r.Path)
					}
					if r.Query.Get("q") != ph {
						t.Error("placeholder swapped in the query, which is not declared")
					}
				},
				wantForms: []string{s, url.PathEscape(s)},
			},
			{
				name: "path percent-encoded by the agent", in: []policy.Location{policy.InPath}, method: "GET",
				target: "/v1/" + strings.ReplaceAll(ph, "_", "%5F") + "/x%2Fy",
				check: func(t *testing.T, r received) {
					if r.Path != "/v1/"+s+"/x/y" || !strings.HasSuffix(r.RawPath, "/x%2Fy") && r.RawPath != "" {
						t.Errorf("path %q raw %q", r.Path, r.RawPath)
					}
				},
				wantForms: []string{s, url.PathEscape(s)},
			},
			{
				name: "query", in: []policy.Location{policy.InQuery}, method: "GET",
				target: "/v1/" + ph + "?a=1&key=" + ph + "&b=x%20y+z&" + ph + "=v&c=pre-" + ph + "-post&d",
				check: func(t *testing.T, r received) {
					if r.Query.Get("key") != s || r.Query.Get("c") != "pre-"+s+"-post" {
						t.Errorf("query %q", r.RawQuery)
					}
					if r.Query.Get(ph) != "v" || r.Query.Get("b") != "x y z" {
						t.Errorf("other pairs changed: %q", r.RawQuery)
					}
					if !strings.HasPrefix(r.RawQuery, "a=1&key=") || !strings.Contains(r.RawQuery, "&b=x%20y+z&"+ph+"=v&c=pre-") || !strings.HasSuffix(r.RawQuery, "-post&d") {
						t.Errorf("order or spelling not kept: %q", r.RawQuery)
					}
					if r.Path != "/v1/"+ph {
						t.Error("path changed")
					}
				},
				wantForms: []string{s, url.QueryEscape(s)},
			},
			{
				name: "header", in: []policy.Location{policy.InHeader}, method: "GET", target: "/",
				check: func(t *testing.T, r received) {
					if got := r.Header.Values("Authorization"); len(got) != 1 || got[0] != "Bearer "+s {
						t.Errorf("Authorization %q", got)
					}
					if r.Header.Get("X-Other") != "keep me "+ph {
						t.Error("placeholder swapped in another header")
					}
				},
				wantForms: []string{s},
			},
			{
				name: "json anywhere", in: []policy.Location{policy.InBody}, method: "POST", target: "/",
				ctype: "application/json; charset=utf-8",
				body:  `{"a":"` + ph + `","n":{"b":["x ` + ph + ` y",1,true,null]},"` + ph + `":"k","num":-1.5e3}`,
				check: func(t *testing.T, r received) {
					var v struct {
						A string
						N struct{ B []any }
						K string `json:"__AGENT_VAULT_PLACEHOLDER__"`
					}
					if err := json.Unmarshal(r.Body, &v); err != nil {
						t.Fatalf("upstream body is not JSON: %v: %s", err, r.Body)
					}
					if v.A != s || v.N.B[0] != "x "+s+" y" || v.K != "k" {
						t.Errorf("decoded %+v", v)
					}
				},
				wantForms: []string{s, jsonInner(s)},
			},
			{
				name: "json fields", in: []policy.Location{policy.InBody}, fields: []string{"api_key"}, method: "POST", target: "/",
				ctype: "application/vnd.api+json",
				body:  `{"api_key":"` + ph + `","other":"` + ph + `","nested":{"api_key":"` + ph + `","list":["` + ph + `"]}}`,
				check: func(t *testing.T, r received) {
					var v struct {
						APIKey string `json:"api_key"`
						Other  string
						Nested struct {
							APIKey string `json:"api_key"`
							List   []string
						}
					}
					if err := json.Unmarshal(r.Body, &v); err != nil {
						t.Fatal(err)
					}
					if v.APIKey != s || v.Nested.APIKey != s || v.Other != ph || v.Nested.List[0] != ph {
						t.Errorf("decoded %+v", v)
					}
				},
				wantForms: []string{s, jsonInner(s)},
			},
			{
				name: "form", in: []policy.Location{policy.InBody}, method: "POST", target: "/",
				ctype: "application/x-www-form-urlencoded",
				body:  "a=" + ph + "&b=pre+" + ph + "&c=x%26y",
				check: func(t *testing.T, r received) {
					v, err := url.ParseQuery(string(r.Body))
					if err != nil || v.Get("a") != s || v.Get("b") != "pre "+s || v.Get("c") != "x&y" {
						t.Errorf("form %q (%v)", r.Body, err)
					}
				},
				wantForms: []string{s, url.QueryEscape(s)},
			},
			{
				name: "form fields", in: []policy.Location{policy.InBody}, fields: []string{"token"}, method: "POST", target: "/",
				ctype: "application/x-www-form-urlencoded",
				body:  "token=" + ph + "&other=" + ph,
				check: func(t *testing.T, r received) {
					v, _ := url.ParseQuery(string(r.Body))
					if v.Get("token") != s || v.Get("other") != ph {
						t.Errorf("form %q", r.Body)
					}
				},
				wantForms: []string{s, url.QueryEscape(s)},
			},
			{
				name: "other content type untouched", in: []policy.Location{policy.InBody}, method: "POST", target: "/",
				ctype: "text/plain", body: "key=" + ph,
				check: func(t *testing.T, r received) {
					if string(r.Body) != "key="+ph {
						t.Errorf("body %q", r.Body)
					}
				},
			},
			{
				name: "malformed json untouched", in: []policy.Location{policy.InBody}, method: "POST", target: "/",
				ctype: "application/json", body: `{"a":"` + ph + `"`,
				check: func(t *testing.T, r received) {
					if string(r.Body) != `{"a":"`+ph+`"` {
						t.Errorf("body %q", r.Body)
					}
				},
			},
			{
				name: "not found anywhere", in: []policy.Location{policy.InPath, policy.InQuery, policy.InBody}, method: "POST",
				target: "/v1/x?a=b", ctype: "application/json", body: `{"a":"b"}`,
				check: func(t *testing.T, r received) {
					if r.Path != "/v1/x" || r.RawQuery != "a=b" || string(r.Body) != `{"a":"b"}` {
						t.Errorf("request changed: %+v", r)
					}
				},
			},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				req := inbound(c.method, c.target, c.ctype, c.body)
				if slices.Contains(c.in, policy.InHeader) {
					req.Header.Set("Authorization", "Bearer "+ph)
				}
				a := placeholderAuth(c.in...)
				a.BodyFields = c.fields
				got, err := inject.Apply(req, svc(a), secret)
				if err != nil {
					t.Fatal(err)
				}
				want := slices.Compact(c.wantForms)
				if !slices.EqualFunc(got, want, func(a []byte, b string) bool { return string(a) == b }) {
					t.Errorf("injected %q, want %q", got, want)
				}
				r := up.send(t, req)
				c.check(t, r)
				noProxyHeaders(t, r.Header)
				if c.body != "" && r.ContentLength != int64(len(r.Body)) {
					t.Errorf("Content-Length %d, body %d bytes", r.ContentLength, len(r.Body))
				}
			})
		}
	}
}

// jsonInner is s as Apply escapes it inside a JSON string.
func jsonInner(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// TestChunkedBodyGetsLength: a body of unknown length leaves with a
// Content-Length once rewritten.
func TestChunkedBodyGetsLength(t *testing.T) {
	up := newUpstream(t)
	req := inbound("POST", "/", "application/json", `{"k":"`+ph+`"}`)
	req.ContentLength = -1
	req.TransferEncoding = []string{"chunked"}
	req.Header.Set("Content-Length", "999")
	if _, err := inject.Apply(req, svc(placeholderAuth(policy.InBody)), plain); err != nil {
		t.Fatal(err)
	}
	want := int64(len(`{"k":"`) + len(plain) + len(`"}`))
	if req.ContentLength != want || req.Header.Get("Content-Length") != strconv.FormatInt(want, 10) || req.TransferEncoding != nil {
		t.Errorf("length %d header %q te %v", req.ContentLength, req.Header.Get("Content-Length"), req.TransferEncoding)
	}
	r := up.send(t, req)
	if r.ContentLength != want || len(r.TransferEncoding) != 0 {
		t.Errorf("upstream saw length %d, te %v", r.ContentLength, r.TransferEncoding)
	}
	// GetBody replays the rewritten body
	b, err := req.GetBody()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _ := b.Read(buf)
	if !strings.Contains(string(buf[:n]), string(plain)) {
		t.Error("GetBody does not return the rewritten body")
	}
}

func TestCompressedBodyUntouched(t *testing.T) {
	req := inbound("POST", "/", "application/json", `{"k":"`+ph+`"}`)
	req.Header.Set("Content-Encoding", "gzip")
	got, err := inject.Apply(req, svc(placeholderAuth(policy.InBody)), plain)
	if err != nil || len(got) != 0 {
		t.Fatalf("%q %v", got, err)
	}
	b := make([]byte, 100)
	n, _ := req.Body.Read(b)
	if string(b[:n]) != `{"k":"`+ph+`"}` {
		t.Errorf("body %q", b[:n])
	}
}
