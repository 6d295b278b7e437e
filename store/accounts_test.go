package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/audit"
	bolt "go.etcd.io/bbolt"
)

func TestInvitesRolesAndRemoval(t *testing.T) {
	s, _, c := proposalStore(t)
	owner, err := s.Setup(alice.Name, "$argon2id$owner")
	if err != nil {
		t.Fatal(err)
	}
	tok := sha256.Sum256([]byte("avi_token"))
	exp := c.now().Add(time.Hour)
	if _, err := s.InviteUser(alice, "bob@example.com", RoleOwner, "prod", tok, exp); !errors.Is(err, ErrInvalid) {
		t.Fatalf("per-vault owner: %v", err)
	}
	if _, err := s.InviteUser(alice, "bob@example.com", "root", "", tok, exp); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown role: %v", err)
	}
	if _, err := s.InviteUser(alice, "bob@example.com", RoleViewer, "nope", tok, exp); !errors.Is(err, ErrNotFound) {
		t.Fatalf("invite to a missing vault: %v", err)
	}
	if _, err := s.InviteUser(alice, alice.Name, RoleViewer, "", tok, exp); !errors.Is(err, ErrExists) {
		t.Fatalf("invite an existing user: %v", err)
	}
	acc, err := s.InviteUser(alice, "bob@example.com", RoleApprover, "prod", tok, exp)
	if err != nil || !acc.Invited || acc.Role != "" || acc.VaultRoles["prod"] != RoleApprover {
		t.Fatalf("invite = %+v, %v", acc, err)
	}
	if acc.VaultRole("prod") != RoleApprover || acc.VaultRole("dev") != "" {
		t.Fatalf("vault roles of %+v", acc)
	}
	if u, err := s.UserByEmail("BOB@example.com"); err != nil || u.PasswordHash != "" {
		t.Fatalf("an invited user has a password: %+v, %v", u, err)
	}
	if _, err := s.AcceptInvite(sha256.Sum256([]byte("wrong")), "$argon2id$bob"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("accept with a wrong token: %v", err)
	}
	u, err := s.AcceptInvite(tok, "$argon2id$bob")
	if err != nil || u.Email != "bob@example.com" || u.PasswordHash != "$argon2id$bob" {
		t.Fatalf("accept = %+v, %v", u, err)
	}
	if _, err := s.AcceptInvite(tok, "$argon2id$again"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an invite used twice: %v", err)
	}
	// an expired invite cannot be accepted
	tok2 := sha256.Sum256([]byte("avi_other"))
	if _, err := s.InviteUser(alice, "carol@example.com", RoleAdmin, "", tok2, c.now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	c.add(2 * time.Minute)
	if _, err := s.AcceptInvite(tok2, "$argon2id$carol"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired invite: %v", err)
	}
	// re-inviting replaces the unaccepted invite
	if acc, err := s.InviteUser(alice, "carol@example.com", RoleViewer, "", tok2, c.now().Add(time.Hour)); err != nil || acc.Role != RoleViewer {
		t.Fatalf("re-invite = %+v, %v", acc, err)
	}

	// grants
	acc, err = s.GrantRole(alice, "bob@example.com", "dev", RoleViewer)
	if err != nil || acc.VaultRole("dev") != RoleViewer || acc.VaultRole("prod") != RoleApprover {
		t.Fatalf("grant = %+v, %v", acc, err)
	}
	acc, err = s.GrantRole(alice, "bob@example.com", "prod", "")
	if err != nil || acc.VaultRole("prod") != "" {
		t.Fatalf("remove a vault role = %+v, %v", acc, err)
	}
	if _, err := s.GrantRole(alice, alice.Name, "", RoleViewer); !errors.Is(err, ErrForbidden) {
		t.Fatalf("demoting the last owner: %v", err)
	}
	if err := s.RemoveUser(alice, alice.Name); !errors.Is(err, ErrForbidden) {
		t.Fatalf("removing the last owner: %v", err)
	}

	// removal ends the user's sessions
	bob, _ := s.UserByEmail("bob@example.com")
	h := sha256.Sum256([]byte("avs_bob"))
	if err := s.CreateSession(Session{TokenHash: h, UserID: bob.ID, ExpiresAt: c.now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.TouchSession(h, c.now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if sess, err := s.Session(h); err != nil || !sess.LastSeen.Equal(c.now().Add(time.Minute)) {
		t.Fatalf("touched session = %+v, %v", sess, err)
	}
	if err := s.RemoveUser(alice, "bob@example.com"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Session(h); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a removed user's session lives on: %v", err)
	}
	accs, err := s.Accounts()
	if err != nil || len(accs) != 2 || accs[0].ID != owner.ID {
		t.Fatalf("accounts = %+v, %v", accs, err)
	}
	for _, a := range []string{"user.invite", "user.accept", "user.grant", "user.remove"} {
		if countActions(t, s, a) == 0 {
			t.Errorf("no %s row", a)
		}
	}
}

func TestPruneKeepsTheChainVerifiable(t *testing.T) {
	s, path, c := proposalStore(t)
	ctx := context.Background()
	for i := range 40 {
		if err := s.Append(ctx, &audit.Event{Actor: agentActor("bot"), Action: "request", Target: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
		if i == 29 {
			c.add(24 * time.Hour)
		}
	}
	total, err := s.AuditVerify()
	if err != nil {
		t.Fatal(err)
	}
	last, _ := s.AuditLastSeq()
	if last != total {
		t.Fatalf("last seq %d, rows %d", last, total)
	}
	cut := c.now().Add(-time.Hour)
	n, err := s.PruneAudit(cut)
	if err != nil || n != int(total)-10 {
		t.Fatalf("prune = %d, %v (want %d)", n, err, total-10)
	}
	rows, err := s.AuditVerify()
	if err != nil || rows != 11 {
		t.Fatalf("verify after prune = %d, %v", rows, err)
	}
	pr, _, _ := s.AuditList(AuditQuery{Action: "audit.prune"})
	if len(pr) != 1 || pr[0].Actor != audit.System {
		t.Fatalf("prune rows = %+v", pr)
	}
	// nothing more to prune: no row
	if n, err := s.PruneAudit(cut); err != nil || n != 0 {
		t.Fatalf("second prune = %d, %v", n, err)
	}
	// prune everything, then keep appending: the chain continues from the anchor
	c.add(time.Hour)
	if n, err := s.PruneAudit(c.now().Add(time.Second)); err != nil || n != 11 {
		t.Fatalf("prune all = %d, %v", n, err)
	}
	if err := s.Append(ctx, &audit.Event{Actor: agentActor("bot"), Action: "request"}); err != nil {
		t.Fatal(err)
	}
	if rows, err := s.AuditVerify(); err != nil || rows != 2 {
		t.Fatalf("verify after pruning everything = %d, %v", rows, err)
	}
	// rows after the anchor
	got, next, err := s.AuditAfter(0, AuditQuery{})
	if err != nil || len(got) != 2 || next != got[1].Seq || got[0].Action != "audit.prune" {
		t.Fatalf("AuditAfter = %+v, %d, %v", got, next, err)
	}

	// a row removed by hand (not by prune) right after the anchor is named
	mustClose(t, s)
	rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.Bucket([]byte(bucketAudit)).Delete(be64(got[0].Seq)) })
	s = openTest(t, path, testOptions())
	_, err = s.AuditVerify()
	var broken *audit.BrokenError
	if !errors.As(err, &broken) || broken.Seq != got[1].Seq {
		t.Fatalf("verify with the first row after the anchor removed: %v", err)
	}
}

func TestAuditAfterPagesAndFilters(t *testing.T) {
	s, _, _ := proposalStore(t)
	start, _ := s.AuditLastSeq()
	for i := range 25 {
		name := "bot"
		if i%5 == 0 {
			name = "helper"
		}
		if err := s.Append(context.Background(), &audit.Event{Actor: agentActor(name), Action: "request"}); err != nil {
			t.Fatal(err)
		}
	}
	var seen []uint64
	after := start
	for range 20 {
		rows, next, err := s.AuditAfter(after, AuditQuery{Agent: "bot", Limit: 7})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			seen = append(seen, r.Seq)
		}
		if next == after {
			break
		}
		after = next
	}
	if len(seen) != 20 {
		t.Fatalf("saw %d bot rows, want 20", len(seen))
	}
	for i := 1; i < len(seen); i++ {
		if seen[i] <= seen[i-1] {
			t.Fatalf("rows out of order: %v", seen)
		}
	}
}
