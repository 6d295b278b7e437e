package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	ok := func() Service { return svc("api", "api.example.com", 0, "") }
	cases := []struct {
		name   string
		mutate func(*Service)
		field  string // "" = valid
		msg    string
	}{
		{"valid bearer", func(s *Service) {}, "", ""},
		{"valid wildcard", func(s *Service) { s.Host = "*.example.com" }, "", ""},
		{"wildcard over a TLD", func(s *Service) { s.Host = "*.com" }, "host", "at least two labels"},
		{"wildcard in the middle", func(s *Service) { s.Host = "api.*.com" }, "host", "leading '*.'"},
		{"two wildcards", func(s *Service) { s.Host = "*.*.example.com" }, "host", "only one"},
		{"upper case host", func(s *Service) { s.Host = "API.example.com" }, "host", "lower case"},
		{"ip literal", func(s *Service) { s.Host = "10.0.0.1" }, "host", "IP address"},
		{"single label", func(s *Service) { s.Host = "localhost" }, "host", "two labels"},
		{"bad char", func(s *Service) { s.Host = "api_x.example.com" }, "host", "contains"},
		{"hyphen edge", func(s *Service) { s.Host = "-api.example.com" }, "host", "'-'"},
		{"empty label", func(s *Service) { s.Host = "api..example.com" }, "host", "empty label"},
		{"reserved name", func(s *Service) { s.Host = ReservedHost }, "host", "reserved"},
		{"long label", func(s *Service) { s.Host = strings.Repeat("a", 64) + ".example.com" }, "host", "63"},
		{"port range", func(s *Service) { s.Port = 70000 }, "port", "out of range"},
		{"path without slash", func(s *Service) { s.Path = "v1" }, "path", "start with '/'"},
		{"path with query", func(s *Service) { s.Path = "/v1?x=1" }, "path", "plain path"},
		{"path traversal", func(s *Service) { s.Path = "/v1/../admin" }, "path", "'..'"},
		{"bad method", func(s *Service) { s.Methods = []string{"FETCH"} }, "methods", "not an HTTP method"},
		{"bad name", func(s *Service) { s.Name = "a b" }, "name", "letters"},
		{"no vault", func(s *Service) { s.Vault = "" }, "vault", "empty"},
		{"no auth", func(s *Service) { s.Auth = Auth{} }, "auth", "missing"},
		{"unknown auth", func(s *Service) { s.Auth.Kind = "oauth" }, "auth", "not an auth kind"},
		{"bearer without credential", func(s *Service) { s.Auth.Credential = "" }, "credential", "needs a credential"},
		{"header without name", func(s *Service) { s.Auth = Auth{Kind: AuthHeader, Credential: "k"} }, "header", "name the header"},
		{"header managed by broker", func(s *Service) { s.Auth = Auth{Kind: AuthHeader, Header: "Host", Credential: "k"} }, "header", "managed by the broker"},
		{"header proxy-", func(s *Service) { s.Auth = Auth{Kind: AuthHeader, Header: "Proxy-Authorization", Credential: "k"} }, "header", "managed by the broker"},
		{"header with space", func(s *Service) { s.Auth = Auth{Kind: AuthHeader, Header: "X Key", Credential: "k"} }, "header", "not a valid header name"},
		{"header prefix CRLF", func(s *Service) { s.Auth = Auth{Kind: AuthHeader, Header: "X-Key", Prefix: "a\r\nb", Credential: "k"} }, "prefix", "CR"},
		{"valid header", func(s *Service) {
			s.Auth = Auth{Kind: AuthHeader, Header: "X-Api-Key", Prefix: "Token ", Credential: "k"}
		}, "", ""},
		{"basic username colon", func(s *Service) { s.Auth = Auth{Kind: AuthBasic, Username: "a:b", Credential: "k"} }, "username", "':'"},
		{"valid basic", func(s *Service) { s.Auth = Auth{Kind: AuthBasic, Username: "user", Credential: "k"} }, "", ""},
		{"placeholder short", func(s *Service) {
			s.Auth = Auth{Kind: AuthPlaceholder, Placeholder: "ab", In: []Location{InHeader}, Header: "X-K", Credential: "k"}
		}, "placeholder", "at least 4"},
		{"placeholder no places", func(s *Service) { s.Auth = Auth{Kind: AuthPlaceholder, Placeholder: "demo token", Credential: "k"} }, "in", "say where"},
		{"placeholder bad place", func(s *Service) {
			s.Auth = Auth{Kind: AuthPlaceholder, Placeholder: "demo token", In: []Location{"cookie"}, Credential: "k"}
		}, "in", "not a place"},
		{"placeholder header unnamed", func(s *Service) {
			s.Auth = Auth{Kind: AuthPlaceholder, Placeholder: "demo token", In: []Location{InHeader}, Credential: "k"}
		}, "header", "name the header"},
		{"valid placeholder", func(s *Service) {
			s.Auth = Auth{Kind: AuthPlaceholder, Placeholder: "demo token", In: []Location{InHeader, InBody, InQuery, InPath}, Header: "Authorization", Credential: "k"}
		}, "", ""},
		{"none with credential", func(s *Service) { s.Auth = Auth{Kind: AuthNone, Credential: "k"} }, "credential", "injects nothing"},
		{"valid none", func(s *Service) { s.Auth = Auth{Kind: AuthNone} }, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := ok()
			c.mutate(&s)
			err := s.Validate()
			if c.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %v is not a *ValidationError", err)
			}
			if ve.Field != c.field || !strings.Contains(ve.Message, c.msg) {
				t.Fatalf("got %s: %s; want field %q containing %q", ve.Field, ve.Message, c.field, c.msg)
			}
		})
	}
}

func TestNormalize(t *testing.T) {
	s := Service{Host: " API.Example.COM. ", Path: "/", Methods: []string{"post", "get", "POST"}}
	s.Normalize()
	if s.Host != "api.example.com" || s.Path != "" || strings.Join(s.Methods, ",") != "GET,POST" {
		t.Fatalf("normalized to %+v", s)
	}
}

func TestPathHasPrefix(t *testing.T) {
	for _, c := range []struct {
		path, prefix string
		want         bool
	}{
		{"/v1", "/v1", true}, {"/v1/", "/v1", true}, {"/v1/x", "/v1", true}, {"/v10", "/v1", false},
		{"/v1x", "/v1/", false}, {"/v1/x", "/v1/", true}, {"/", "", true}, {"/anything", "/", true}, {"/v", "/v1", false},
	} {
		if got := PathHasPrefix(c.path, c.prefix); got != c.want {
			t.Errorf("PathHasPrefix(%q, %q) = %v, want %v", c.path, c.prefix, got, c.want)
		}
	}
}
