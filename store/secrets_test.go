package store

import (
	"fmt"
	"sync"
	"testing"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

func TestSecretCacheFollowsWrites(t *testing.T) {
	s, _ := newStore(t)
	if _, err := s.CreateVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Secret("prod", "token"); ok {
		t.Fatal("secret before set")
	}
	val := []byte("first")
	if _, err := s.SetCredential(alice, "prod", "token", val); err != nil {
		t.Fatal(err)
	}
	copy(val, "XXXXX") // the caller reuses its buffer
	if v, ok := s.Secret("prod", "token"); !ok || string(v) != "first" {
		t.Fatalf("after set: %q %v", v, ok)
	}
	held, _ := s.Secret("prod", "token")
	if _, err := s.SetCredential(alice, "prod", "token", []byte("second")); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Secret("prod", "token"); string(v) != "second" {
		t.Fatalf("after replace: %q", v)
	}
	if string(held) != "first" {
		t.Fatalf("a value handed out earlier changed under its reader: %q", held)
	}
	// a failed write leaves the cache alone
	if _, err := s.SetCredential(alice, "nope", "token", []byte("x")); err == nil {
		t.Fatal("set in a missing vault")
	}
	if _, ok := s.Secret("nope", "token"); ok {
		t.Fatal("a failed write reached the cache")
	}
	if err := s.DeleteCredential(alice, "prod", "token"); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Secret("prod", "token"); ok {
		t.Fatal("deleted secret still served")
	}
	if _, err := s.SetCredential(alice, "prod", "k2", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Secret("prod", "k2"); ok {
		t.Fatal("secret of a deleted vault still served")
	}
}

func TestSecretDoesNotAllocate(t *testing.T) {
	s, _ := newStore(t)
	if _, err := s.CreateVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}
	key := "a-rather-long-credential-name-to-defeat-small-string-tricks"
	if _, err := s.SetCredential(alice, "prod", key, []byte("v")); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if _, ok := s.Secret("prod", key); !ok {
			t.Fatal("missing")
		}
	})
	if allocs != 0 {
		t.Fatalf("Secret allocates %.1f times per call", allocs)
	}
}

// TestSecretConcurrentWritesLandInCommitOrder: the last committed value wins
// in the cache, whatever order writers finish in.
func TestSecretConcurrentWritesLandInCommitOrder(t *testing.T) {
	s, _ := newStore(t)
	if _, err := s.CreateVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop, readerDone := make(chan struct{}), make(chan struct{})
	go func() { // a reader on the hot path meanwhile
		defer close(readerDone)
		for {
			select {
			case <-stop:
				return
			default:
				s.Secret("prod", "k")
			}
		}
	}()
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.SetCredential(alice, "prod", "k", fmt.Appendf(nil, "v%d", i)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-readerDone
	// reopen decrypts from disk: the cache must agree with it
	cached, _ := s.Secret("prod", "k")
	mustClose(t, s)
	s2 := openTest(t, s.path, testOptions())
	disk, _ := s2.Secret("prod", "k")
	if string(cached) != string(disk) {
		t.Fatalf("cache held %q, disk holds %q", cached, disk)
	}
}

// The policy hook runs once for every committed change the data path must
// see, and never for audit rows, reads or failed writes.
func TestOnPolicyChangeFiresOnPolicyChanges(t *testing.T) {
	s, _ := newStore(t)
	var calls int
	s.SetOnPolicyChange(func() { calls++ })
	expect := func(what string) {
		t.Helper()
		if calls != 1 {
			t.Fatalf("%d hook calls after %s, want 1", calls, what)
		}
		calls = 0
	}
	if _, err := s.CreateVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}
	expect("vault create")
	if _, err := s.SetCredential(alice, "prod", "t", []byte("v")); err != nil {
		t.Fatal(err)
	}
	expect("credential set")
	if _, err := s.AddService(alice, bearer("prod", "api", "api.example.com", "t")); err != nil {
		t.Fatal(err)
	}
	expect("service add")
	if _, err := s.CreateAgent(alice, policy.Agent{Name: "a", Vault: "prod"}); err != nil {
		t.Fatal(err)
	}
	expect("agent create")
	if err := s.RevokeAgent(alice, "a"); err != nil {
		t.Fatal(err)
	}
	expect("agent revoke")

	// audit rows, reads and failed writes do not call it
	if err := s.Append(t.Context(), &audit.Event{Actor: audit.System, Action: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Snapshot(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateVault(alice, "prod"); err == nil {
		t.Fatal("duplicate vault")
	}
	if calls != 0 {
		t.Fatalf("%d hook calls without a change", calls)
	}

	s.SetOnPolicyChange(nil)
	if _, err := s.CreateVault(alice, "after-unset"); err != nil {
		t.Fatal(err)
	}
	if calls != 0 {
		t.Fatal("the hook ran after it was unset")
	}
}

func TestSnapshotVersionAndContents(t *testing.T) {
	s, path := newStore(t)
	s0, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddService(alice, policy.Service{Vault: "prod", Name: "status", Host: "*.example.com", Port: 443, Auth: policy.Auth{Kind: policy.AuthNone}}); err != nil {
		t.Fatal(err)
	}
	s1, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if s1.Version() != s0.Version()+2 {
		t.Fatalf("versions %d -> %d after two changes", s0.Version(), s1.Version())
	}
	if d := s1.Match("prod", policy.Request{Host: "a.example.com", Port: 443, Method: "GET", Path: "/"}); !d.Allowed() || d.Service.Name != "status" {
		t.Fatalf("decision = %+v", d)
	}
	if err := s.Append(t.Context(), &audit.Event{Actor: audit.System, Action: "x"}); err != nil {
		t.Fatal(err)
	}
	if s2, _ := s.Snapshot(); s2.Version() != s1.Version() {
		t.Fatal("an audit row changed the policy version")
	}
	mustClose(t, s)
	s = openTest(t, path, testOptions())
	if s3, _ := s.Snapshot(); s3.Version() != s1.Version() {
		t.Fatalf("version after reopen %d, want %d", s3.Version(), s1.Version())
	}
}
