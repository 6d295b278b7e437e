package store

import (
	"testing"

	"github.com/agentvault/agent-vault/audit"
)

// The synchronous hook has run by the time a mutating method returns, and
// sees the committed change.
func TestOnPolicyChangeRunsBeforeReturn(t *testing.T) {
	s, _ := newStore(t)
	var seen []string
	s.SetOnPolicyChange(func() {
		vs, err := s.Vaults()
		if err != nil {
			t.Error(err)
		}
		seen = append(seen, "")
		for _, v := range vs {
			seen[len(seen)-1] += v.Name
		}
	})
	user := audit.Actor{Kind: audit.ActorUser, Name: "owner@example.test"}
	if _, err := s.CreateVault(user, "prod"); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 || seen[0] != "prod" {
		t.Fatalf("hook saw %q after CreateVault returned", seen)
	}
	if err := s.DeleteVault(user, "prod"); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 || seen[1] != "" {
		t.Fatalf("hook saw %q after DeleteVault returned", seen)
	}
}

// The hook (which rebuilds the data path's policy) already finds a set
// credential's value in the cache, and a deleted one gone: the data path
// never holds a snapshot that disagrees with the secrets it can inject.
func TestOnPolicyChangeSeesSecretCache(t *testing.T) {
	s, _ := newStore(t)
	user := audit.Actor{Kind: audit.ActorUser, Name: "owner@example.test"}
	if _, err := s.CreateVault(user, "prod"); err != nil {
		t.Fatal(err)
	}
	var seen []bool
	s.SetOnPolicyChange(func() {
		_, ok := s.Secret("prod", "api_key")
		seen = append(seen, ok)
	})
	if _, err := s.SetCredential(user, "prod", "api_key", []byte("sk-test-value")); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteCredential(user, "prod", "api_key"); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 || !seen[0] || seen[1] {
		t.Fatalf("hook saw the value present %v, want [true false]", seen)
	}
}
