package inject_test

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/agentvault/agent-vault/mitm/inject"
	"github.com/agentvault/agent-vault/policy"
)

func BenchmarkApplyBearer(b *testing.B) {
	s := svc(policy.Auth{Kind: policy.AuthBearer, Credential: "k"})
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest("GET", "/v1/messages", nil)
		req.Header.Set("Authorization", "Bearer agent")
		req.Header.Set("Content-Type", "application/json")
		if _, err := inject.Apply(req, s, plain); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApplyPlaceholder swaps in a header, the query and a 4 KiB JSON
// body.
func BenchmarkApplyPlaceholder(b *testing.B) {
	s := svc(policy.Auth{Kind: policy.AuthPlaceholder, Credential: "k", Placeholder: ph, Header: "X-Api-Key",
		In: []policy.Location{policy.InHeader, policy.InQuery, policy.InBody}})
	body := `{"model":"m","key":"` + ph + `","messages":[{"role":"user","content":"` + strings.Repeat("hello world ", 340) + `"}]}`
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest("POST", "/v1/messages?key="+ph+"&x=1", strings.NewReader(body))
		req.Header.Set("X-Api-Key", ph)
		req.Header.Set("Content-Type", "application/json")
		if _, err := inject.Apply(req, s, nasty); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewRequest is the cost of building the request in the loops
// above, to subtract.
func BenchmarkNewRequest(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest("GET", "/v1/messages", nil)
		req.Header.Set("Authorization", "Bearer agent")
		req.Header.Set("Content-Type", "application/json")
	}
}
