package policy

import (
	"net/netip"
	"testing"
)

func svc(name, host string, port int, path string, methods ...string) Service {
	return Service{Vault: "v", Name: name, Host: host, Port: port, Path: path, Methods: methods,
		Auth: Auth{Kind: AuthBearer, Credential: "k"}}
}

func TestMatchPrecedence(t *testing.T) {
	snap := NewSnapshot(Input{
		Vaults: []string{"v", "empty"},
		Services: []Service{
			svc("wild", "*.example.com", 0, ""),
			svc("wild-deep", "*.api.example.com", 0, ""),
			svc("exact", "api.example.com", 0, ""),
			svc("exact-port", "api.example.com", 8443, ""),
			svc("exact-v1", "api.example.com", 0, "/v1"),
			svc("exact-v1-users", "api.example.com", 0, "/v1/users"),
			svc("post-only", "write.example.org", 0, "/upload", "POST"),
			svc("get-any", "write.example.org", 0, ""),
			svc("port-only", "ports.example.org", 443, "/x"),
		},
	})
	cases := []struct {
		name    string
		vault   string
		req     Request
		want    Reason
		service string
	}{
		{"exact beats wildcard", "v", Request{"api.example.com", 443, "GET", "/"}, ReasonMatched, "exact"},
		{"port-specific beats any port", "v", Request{"api.example.com", 8443, "GET", "/"}, ReasonMatched, "exact-port"},
		{"longest path prefix wins", "v", Request{"api.example.com", 443, "GET", "/v1/users/7"}, ReasonMatched, "exact-v1-users"},
		{"shorter prefix when longer does not cover", "v", Request{"api.example.com", 443, "GET", "/v1/teams"}, ReasonMatched, "exact-v1"},
		{"prefix on segment boundary only", "v", Request{"api.example.com", 443, "GET", "/v10"}, ReasonMatched, "exact"},
		{"wildcard matches below suffix", "v", Request{"www.example.com", 443, "GET", "/"}, ReasonMatched, "wild"},
		{"longer wildcard suffix wins", "v", Request{"eu.api.example.com", 443, "GET", "/"}, ReasonMatched, "wild-deep"},
		{"wildcard does not match its apex", "v", Request{"example.com", 443, "GET", "/"}, ReasonNoHost, ""},
		{"unrelated host", "v", Request{"evil.test", 443, "GET", "/"}, ReasonNoHost, ""},
		{"suffix trick is not a subdomain", "v", Request{"evilexample.com", 443, "GET", "/"}, ReasonNoHost, ""},
		{"method filter falls through to less specific", "v", Request{"write.example.org", 443, "GET", "/upload"}, ReasonMatched, "get-any"},
		{"method filter matches", "v", Request{"write.example.org", 443, "POST", "/upload"}, ReasonMatched, "post-only"},
		{"port refused", "v", Request{"ports.example.org", 80, "GET", "/x"}, ReasonPort, ""},
		{"path refused", "v", Request{"ports.example.org", 443, "GET", "/y"}, ReasonPath, ""},
		{"unknown vault", "nope", Request{"api.example.com", 443, "GET", "/"}, ReasonUnknownVault, ""},
		{"empty vault", "empty", Request{"api.example.com", 443, "GET", "/"}, ReasonNoHost, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := snap.Match(c.vault, c.req)
			if d.Reason != c.want {
				t.Fatalf("reason = %q, want %q", d.Reason, c.want)
			}
			if (d.Action == Allow) != (c.want == ReasonMatched) {
				t.Fatalf("action %q does not fit reason %q", d.Action, d.Reason)
			}
			got := ""
			if d.Service != nil {
				got = d.Service.Name
			}
			if got != c.service {
				t.Fatalf("service = %q, want %q", got, c.service)
			}
		})
	}
}

func TestMatchMethodReason(t *testing.T) {
	snap := NewSnapshot(Input{Vaults: []string{"v"}, Services: []Service{svc("ro", "api.example.com", 0, "/v1", "GET", "HEAD")}})
	if d := snap.Match("v", Request{"api.example.com", 443, "DELETE", "/v1/x"}); d.Reason != ReasonMethod || d.Allowed() {
		t.Fatalf("got %+v, want method_not_allowed", d)
	}
}

func TestHostAllowed(t *testing.T) {
	snap := NewSnapshot(Input{Vaults: []string{"v"}, Services: []Service{svc("a", "api.example.com", 8443, "/v1"), svc("w", "*.corp.example", 0, "")}})
	for host, want := range map[string]bool{
		"api.example.com": true, "x.corp.example": true, "a.b.corp.example": true,
		"corp.example": false, "example.com": false, "": false,
	} {
		if got := snap.HostAllowed("v", host); got != want {
			t.Errorf("HostAllowed(%q) = %v, want %v", host, got, want)
		}
	}
	if snap.HostAllowed("other", "api.example.com") {
		t.Error("a host of one vault is allowed in another")
	}
}

func TestAgentLookups(t *testing.T) {
	tok := [32]byte{1}
	snap := NewSnapshot(Input{
		Vaults: []string{"v"},
		Agents: []Agent{
			{Name: "wide", Vault: "v", Sources: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
			{Name: "narrow", Vault: "v", Sources: []netip.Prefix{netip.MustParsePrefix("10.1.2.0/24"), netip.MustParsePrefix("fd77::/64")}},
			{Name: "tok", Vault: "v", TokenHash: tok},
			{Name: "cg", Vault: "v", CgroupID: 42},
			{Name: "orphan", Vault: "gone", TokenHash: [32]byte{2}},
		},
	})
	for addr, want := range map[string]string{"10.1.2.3": "narrow", "10.9.9.9": "wide", "::ffff:10.1.2.3": "narrow", "fd77::5": "narrow", "192.0.2.1": ""} {
		a, ok := snap.AgentBySource(netip.MustParseAddr(addr))
		got := ""
		if ok {
			got = a.Name
		}
		if got != want {
			t.Errorf("AgentBySource(%s) = %q, want %q", addr, got, want)
		}
	}
	if a, ok := snap.AgentByTokenHash(tok); !ok || a.Name != "tok" {
		t.Error("token lookup failed")
	}
	if _, ok := snap.AgentByTokenHash([32]byte{2}); ok {
		t.Error("an agent of a vault that does not exist was indexed")
	}
	if a, ok := snap.AgentByCgroupID(42); !ok || a.Name != "cg" {
		t.Error("cgroup lookup failed")
	}
}

func TestSnapshotCopiesInput(t *testing.T) {
	in := []Service{svc("a", "api.example.com", 0, "", "GET")}
	snap := NewSnapshot(Input{Vaults: []string{"v"}, Services: in})
	in[0].Methods[0] = "DELETE"
	in[0].Host = "evil.test"
	if d := snap.Match("v", Request{"api.example.com", 443, "GET", "/"}); !d.Allowed() {
		t.Fatalf("snapshot changed with its input: %+v", d)
	}
}

func BenchmarkMatch(b *testing.B) {
	var list []Service
	for i := 0; i < 200; i++ {
		list = append(list, svc("s"+string(rune('a'+i%26))+string(rune('a'+i/26)), "h"+string(rune('a'+i%26))+string(rune('a'+i/26))+".example.com", 0, "/v1"))
	}
	list = append(list, svc("wild", "*.example.net", 0, ""))
	snap := NewSnapshot(Input{Vaults: []string{"v"}, Services: list})
	req := Request{"hab.example.com", 443, "GET", "/v1/chat/completions"}
	b.ReportAllocs()
	for b.Loop() {
		if !snap.Match("v", req).Allowed() {
			b.Fatal("no match")
		}
	}
}
