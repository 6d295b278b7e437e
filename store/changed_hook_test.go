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
