package store

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

func bearer(vault, name, host, cred string) policy.Service {
	return policy.Service{Vault: vault, Name: name, Host: host, Auth: policy.Auth{Kind: policy.AuthBearer, Credential: cred}}
}

func TestVaults(t *testing.T) {
	s, _ := newStore(t)
	v, err := s.CreateVault(alice, "prod")
	if err != nil || v.Name != "prod" || v.CreatedBy != alice.Name || v.CreatedAt.Location() != time.UTC {
		t.Fatalf("create = %+v, %v", v, err)
	}
	if _, err := s.CreateVault(alice, "prod"); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate vault: %v", err)
	}
	_, err = s.CreateVault(alice, "bad name")
	var verr *policy.ValidationError
	if !errors.Is(err, ErrInvalid) || !errors.As(err, &verr) || verr.Field != "vault" {
		t.Fatalf("invalid vault name: %v", err)
	}
	if _, err := s.CreateVault(alice, "dev"); err != nil {
		t.Fatal(err)
	}
	vs, err := s.Vaults()
	if err != nil || len(vs) != 2 || vs[0].Name != "dev" || vs[1].Name != "prod" {
		t.Fatalf("vaults = %+v, %v", vs, err)
	}
	if err := s.DeleteVault(alice, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete missing vault: %v", err)
	}
}

func TestDeleteVaultRemovesEverythingInIt(t *testing.T) {
	s, _ := newStore(t)
	for _, v := range []string{"prod", "dev"} {
		if _, err := s.CreateVault(alice, v); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetCredential(alice, v, "token", []byte("secret-"+v)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.AddService(alice, bearer(v, "api", "api.example.com", "token")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateAgent(alice, policy.Agent{Name: "bot-" + v, Vault: v}); err != nil {
			t.Fatal(err)
		}
	}
	// "prod" and "prod2" share a prefix: deleting one must not touch the other
	if _, err := s.CreateVault(alice, "prod2"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetCredential(alice, "prod2", "token", []byte("p2")); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Credentials("prod"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("credentials of a deleted vault: %v", err)
	}
	if _, ok := s.Secret("prod", "token"); ok {
		t.Fatal("deleted vault's secret still served")
	}
	if v, ok := s.Secret("prod2", "token"); !ok || string(v) != "p2" {
		t.Fatal("deleting prod touched prod2")
	}
	agents, _ := s.Agents("")
	if len(agents) != 1 || agents[0].Name != "bot-dev" {
		t.Fatalf("agents after delete = %+v", agents)
	}
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if snap.HasVault("prod") || !snap.HasVault("dev") || len(snap.Services("dev")) != 1 {
		t.Fatal("snapshot still shows the deleted vault or lost the other")
	}
	// recreating the vault starts empty
	if _, err := s.CreateVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}
	if svcs, _ := s.Services("prod"); len(svcs) != 0 {
		t.Fatalf("recreated vault has services %+v", svcs)
	}
	if creds, _ := s.Credentials("prod2"); len(creds) != 1 {
		t.Fatalf("prod2 credentials = %+v", creds)
	}
}

func TestCredentials(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600))
	var mu sync.Mutex
	opt := testOptions()
	opt.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := openTest(t, t.TempDir()+"/c.db", opt)
	if _, err := s.SetCredential(alice, "prod", "token", []byte("x")); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"prod"`) {
		t.Fatalf("set in missing vault: %v", err)
	}
	if _, err := s.CreateVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetCredential(alice, "prod", "bad/key", []byte("x")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad key: %v", err)
	}
	if _, err := s.SetCredential(alice, "prod", "token", nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty value: %v", err)
	}
	c, err := s.SetCredential(alice, "prod", "token", []byte("one"))
	if err != nil || !c.CreatedAt.Equal(now) || c.CreatedAt.Location() != time.UTC {
		t.Fatalf("set = %+v, %v", c, err)
	}
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	bob := audit.Actor{Kind: audit.ActorUser, Name: "bob@example.com"}
	c, err = s.SetCredential(bob, "prod", "token", []byte("two"))
	if err != nil || c.CreatedAt.Equal(c.UpdatedAt) || c.UpdatedBy != bob.Name {
		t.Fatalf("replace = %+v, %v", c, err)
	}
	list, err := s.Credentials("prod")
	if err != nil || len(list) != 1 || list[0].Key != "token" || !list[0].UpdatedAt.Equal(now) || list[0].UpdatedBy != bob.Name {
		t.Fatalf("list = %+v, %v", list, err)
	}
	if err := s.DeleteCredential(alice, "prod", "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
	if err := s.DeleteCredential(alice, "prod", "token"); err != nil {
		t.Fatal(err)
	}
	if list, _ := s.Credentials("prod"); len(list) != 0 {
		t.Fatalf("after delete: %+v", list)
	}
}

func TestServices(t *testing.T) {
	s, _ := newStore(t)
	if _, err := s.AddService(alice, bearer("prod", "api", "api.example.com", "token")); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "prod") {
		t.Fatalf("service in missing vault: %v", err)
	}
	if _, err := s.CreateVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}

	// validation: ErrInvalid wrapping the policy error and its message
	bad := bearer("prod", "api", "*.com", "token")
	_, err := s.AddService(alice, bad)
	var verr *policy.ValidationError
	if !errors.Is(err, ErrInvalid) || !errors.As(err, &verr) || verr.Field != "host" || !strings.Contains(err.Error(), verr.Message) {
		t.Fatalf("invalid host: %v", err)
	}
	if _, err := s.AddService(alice, policy.Service{Vault: "prod", Name: "x", Host: "a.example.com"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("missing auth: %v", err)
	}

	// the credential must exist unless auth is none
	_, err = s.AddService(alice, bearer("prod", "api", "api.example.com", "token"))
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `credential "token"`) {
		t.Fatalf("missing credential: %v", err)
	}
	if _, err := s.AddService(alice, policy.Service{Vault: "prod", Name: "open", Host: "status.example.com", Auth: policy.Auth{Kind: policy.AuthNone}}); err != nil {
		t.Fatalf("auth none without credential: %v", err)
	}
	if _, err := s.SetCredential(alice, "prod", "token", []byte("t")); err != nil {
		t.Fatal(err)
	}

	// normalized on the way in; the caller's slices are not touched
	methods := []string{"post", "get", "GET"}
	in := bearer("prod", "api", "API.Example.com.", "token")
	in.Methods = methods
	in.Path = "/"
	got, err := s.AddService(alice, in)
	if err != nil {
		t.Fatal(err)
	}
	if got.Host != "api.example.com" || got.Path != "" || !slices.Equal(got.Methods, []string{"GET", "POST"}) {
		t.Fatalf("normalized = %+v", got)
	}
	if !slices.Equal(methods, []string{"post", "get", "GET"}) {
		t.Fatalf("AddService changed the caller's slice: %v", methods)
	}
	if _, err := s.AddService(alice, bearer("prod", "api", "other.example.com", "token")); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate service: %v", err)
	}
	list, err := s.Services("prod")
	if err != nil || len(list) != 2 || list[0].Name != "api" || list[1].Name != "open" || list[0].Host != "api.example.com" {
		t.Fatalf("services = %+v, %v", list, err)
	}

	// deleting a credential a service uses is allowed
	if err := s.DeleteCredential(alice, "prod", "token"); err != nil {
		t.Fatalf("delete used credential: %v", err)
	}
	if list, _ := s.Services("prod"); len(list) != 2 {
		t.Fatal("deleting the credential removed its service")
	}
	if err := s.DeleteService(alice, "prod", "api"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteService(alice, "prod", "api"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete missing service: %v", err)
	}
}

func TestAgents(t *testing.T) {
	s, _ := newStore(t)
	for _, v := range []string{"prod", "dev"} {
		if _, err := s.CreateVault(alice, v); err != nil {
			t.Fatal(err)
		}
	}
	a := policy.Agent{
		Name: "ci", Vault: "prod", TokenHash: [32]byte{7},
		Sources: []netip.Prefix{netip.MustParsePrefix("10.77.1.2/24")}, Cgroup: "/agent-vault.agents/ci/",
		Revoked: true, CgroupID: 99,
	}
	rec, err := s.CreateAgent(alice, a)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Revoked || rec.CgroupID != 0 || rec.Cgroup != "agent-vault.agents/ci" || rec.Sources[0] != netip.MustParsePrefix("10.77.1.0/24") || rec.CreatedBy != alice.Name {
		t.Fatalf("created = %+v", rec)
	}
	if _, err := s.CreateAgent(alice, policy.Agent{Name: "ci", Vault: "dev"}); !errors.Is(err, ErrExists) {
		t.Fatalf("same name in another vault: %v", err)
	}
	if _, err := s.CreateAgent(alice, policy.Agent{Name: "ci2", Vault: "dev", TokenHash: [32]byte{7}}); !errors.Is(err, ErrExists) {
		t.Fatalf("reused token hash: %v", err)
	}
	if _, err := s.CreateAgent(alice, policy.Agent{Name: "x", Vault: "nope"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing vault: %v", err)
	}
	if _, err := s.CreateAgent(alice, policy.Agent{Name: "-x", Vault: "dev"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := s.CreateAgent(alice, policy.Agent{Name: "x", Vault: "dev", Cgroup: "a/../b"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad cgroup: %v", err)
	}
	if _, err := s.CreateAgent(alice, policy.Agent{Name: "dev-bot", Vault: "dev"}); err != nil {
		t.Fatal(err)
	}
	prod, err := s.Agents("prod")
	if err != nil || len(prod) != 1 || prod[0].TokenHash != ([32]byte{7}) {
		t.Fatalf("prod agents = %+v, %v", prod, err)
	}
	all, _ := s.Agents("")
	if len(all) != 2 {
		t.Fatalf("all agents = %+v", all)
	}
	if _, err := s.Agents("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("agents of a missing vault: %v", err)
	}

	snap, _ := s.Snapshot()
	if got, ok := snap.AgentByTokenHash([32]byte{7}); !ok || got.Name != "ci" {
		t.Fatal("snapshot does not find the agent by token")
	}
	if got, ok := snap.AgentBySource(netip.MustParseAddr("10.77.1.9")); !ok || got.Name != "ci" {
		t.Fatal("snapshot does not find the agent by source")
	}
	if err := s.RevokeAgent(alice, "ci"); err != nil {
		t.Fatal(err)
	}
	snap2, _ := s.Snapshot()
	if got, _ := snap2.Agent("ci"); got == nil || !got.Revoked || snap2.Version() <= snap.Version() {
		t.Fatalf("after revoke: %+v, version %d -> %d", got, snap.Version(), snap2.Version())
	}
	if err := s.RevokeAgent(alice, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke missing: %v", err)
	}
	if err := s.DeleteAgent(alice, "ci"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteAgent(alice, "ci"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
	rows, _, _ := s.AuditList(AuditQuery{Action: "agent.revoke"})
	if len(rows) != 1 || rows[0].Vault != "prod" || rows[0].Target != "ci" {
		t.Fatalf("revoke audit rows = %+v", rows)
	}
}

func TestUsersAndSessions(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	opt := testOptions()
	opt.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := openTest(t, t.TempDir()+"/u.db", opt)
	if has, err := s.HasOwner(); err != nil || has {
		t.Fatalf("has owner on a new store = %v, %v", has, err)
	}
	if _, err := s.Setup("not-an-email", "h"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad email: %v", err)
	}
	if _, err := s.Setup("a@b.example", ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty hash: %v", err)
	}
	u, err := s.Setup("Owner@Example.com", "$argon2id$h")
	if err != nil || u.Role != RoleOwner || u.ID == 0 {
		t.Fatalf("setup = %+v, %v", u, err)
	}
	if _, err := s.Setup("other@example.com", "h"); !errors.Is(err, ErrSetupDone) {
		t.Fatalf("second setup: %v", err)
	}
	if has, _ := s.HasOwner(); !has {
		t.Fatal("HasOwner after setup = false")
	}
	if got, err := s.UserByEmail("owner@EXAMPLE.com"); err != nil || got.ID != u.ID || got.Email != "Owner@Example.com" {
		t.Fatalf("by email = %+v, %v", got, err)
	}
	if _, err := s.UserByEmail("nobody@example.com"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown email: %v", err)
	}
	if got, err := s.UserByID(u.ID); err != nil || got.PasswordHash != "$argon2id$h" {
		t.Fatalf("by id = %+v, %v", got, err)
	}
	if _, err := s.UserByID(42); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
	rows, _, _ := s.AuditList(AuditQuery{Action: "user.setup"})
	if len(rows) != 1 || rows[0].Actor.Kind != audit.ActorUser || rows[0].Actor.Name != "Owner@Example.com" {
		t.Fatalf("setup audit = %+v", rows)
	}

	h := [32]byte{1, 2, 3}
	if err := s.CreateSession(Session{TokenHash: h, UserID: 42, ExpiresAt: now.Add(time.Hour)}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("session for unknown user: %v", err)
	}
	if err := s.CreateSession(Session{TokenHash: h, UserID: u.ID}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("session without expiry: %v", err)
	}
	if err := s.CreateSession(Session{TokenHash: h, UserID: u.ID, ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	h2 := [32]byte{9}
	if err := s.CreateSession(Session{TokenHash: h2, UserID: u.ID, ExpiresAt: now.Add(2 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Session(h)
	if err != nil || got.UserID != u.ID || !got.CreatedAt.Equal(now) || got.TokenHash != h {
		t.Fatalf("session = %+v, %v", got, err)
	}
	if _, err := s.Session([32]byte{4}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown session: %v", err)
	}
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	if _, err := s.Session(h); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired session: %v", err)
	}
	if n, err := s.DeleteExpiredSessions(); err != nil || n != 1 {
		t.Fatalf("delete expired = %d, %v", n, err)
	}
	if _, err := s.Session(h2); err != nil {
		t.Fatalf("live session after pruning: %v", err)
	}
	if err := s.DeleteSession(h2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Session(h2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted session: %v", err)
	}
}

func TestEveryMutationIsAudited(t *testing.T) {
	s, _ := newStore(t)
	steps := []func() error{
		func() error { _, err := s.Setup("alice@example.com", "h"); return err },
		func() error { _, err := s.CreateVault(alice, "prod"); return err },
		func() error { _, err := s.SetCredential(alice, "prod", "token", []byte("v")); return err },
		func() error {
			_, err := s.AddService(alice, bearer("prod", "api", "api.example.com", "token"))
			return err
		},
		func() error { _, err := s.CreateAgent(alice, policy.Agent{Name: "bot", Vault: "prod"}); return err },
		func() error { return s.RevokeAgent(alice, "bot") },
		func() error { return s.DeleteAgent(alice, "bot") },
		func() error { return s.DeleteService(alice, "prod", "api") },
		func() error { return s.DeleteCredential(alice, "prod", "token") },
		func() error { return s.PutCA([]byte("c"), []byte("k")) },
		func() error { return s.DeleteVault(alice, "prod") },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	// failed mutations leave no row
	if _, err := s.CreateVault(alice, "bad name"); err == nil {
		t.Fatal("invalid vault accepted")
	}
	if err := s.DeleteVault(alice, "prod"); err == nil {
		t.Fatal("deleted a missing vault")
	}
	rows, next, err := s.AuditList(AuditQuery{})
	if err != nil || next != 0 {
		t.Fatal(err, next)
	}
	var got []string
	for i := len(rows) - 1; i >= 0; i-- {
		r := rows[i]
		got = append(got, r.Action+":"+r.Vault+":"+r.Target+":"+r.Actor.Name)
		if r.Time.Location() != time.UTC {
			t.Fatalf("row %d time not UTC: %v", r.Seq, r.Time)
		}
	}
	want := []string{
		"store.create:::system",
		"user.setup::alice@example.com:alice@example.com",
		"vault.create:prod:prod:alice@example.com",
		"credential.set:prod:token:alice@example.com",
		"service.add:prod:api:alice@example.com",
		"agent.create:prod:bot:alice@example.com",
		"agent.revoke:prod:bot:alice@example.com",
		"agent.delete:prod:bot:alice@example.com",
		"service.delete:prod:api:alice@example.com",
		"credential.delete:prod:token:alice@example.com",
		"ca.store::root:system",
		"vault.delete:prod:prod:alice@example.com",
	}
	got[0] = "store.create:::system" // its target names the mode
	if !slices.Equal(got, want) {
		t.Fatalf("audit actions:\n got %q\nwant %q", got, want)
	}
	if n, err := s.AuditVerify(); err != nil || n != uint64(len(want)) {
		t.Fatalf("verify = %d, %v", n, err)
	}
}
