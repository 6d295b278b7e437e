package store

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/policy"
)

func v1Copy(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "v1.db")
	copyFile(t, v1FixturePath, path)
	return path
}

func v1Options() Options {
	opt := testOptions()
	opt.Password = []byte(v1FixturePassword)
	return opt
}

func schemaOf(t *testing.T, path string) (schema uint64, hasProposals bool) {
	t.Helper()
	rawView(t, path, func(tx *bolt.Tx) error {
		schema = binary.BigEndian.Uint64(tx.Bucket([]byte(bucketMeta)).Get(metaSchema))
		hasProposals = tx.Bucket([]byte(bucketProposals)) != nil
		return nil
	})
	return schema, hasProposals
}

func TestV1FixtureIsVersion1(t *testing.T) {
	path := v1Copy(t)
	schema, hasProposals := schemaOf(t, path)
	if schema != 1 || hasProposals {
		t.Fatalf("fixture has schema %d, proposals bucket %v: it must stay a v1 file", schema, hasProposals)
	}
	rawView(t, path, func(tx *bolt.Tx) error {
		v := tx.Bucket([]byte(bucketServices)).Get(pairKey("prod", "github"))
		if strings.Contains(string(v), `"v"`) {
			t.Fatalf("v1 service record has a version field: %s", v)
		}
		return nil
	})
}

func TestMigrateV1Fixture(t *testing.T) {
	path := v1Copy(t)

	// a wrong password must not migrate (the key is unlocked first)
	before := fileHash(t, path)
	bad := v1Options()
	bad.Password = []byte("wrong")
	if _, err := Open(path, bad); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("wrong password on v1: %v", err)
	}
	if fileHash(t, path) != before {
		t.Fatal("a failed open of a v1 file changed it")
	}

	s := openTest(t, path, v1Options())
	// the layout is now v2
	err := s.db.View(func(tx *bolt.Tx) error {
		if got := binary.BigEndian.Uint64(tx.Bucket([]byte(bucketMeta)).Get(metaSchema)); got != SchemaVersion {
			t.Errorf("schema after migration = %d", got)
		}
		if tx.Bucket([]byte(bucketProposals)) == nil {
			t.Error("no proposals bucket after migration")
		}
		return tx.Bucket([]byte(bucketServices)).ForEach(func(k, v []byte) error {
			if !strings.HasPrefix(string(v), `{"v":2,`) {
				t.Errorf("service %q not rewritten: %s", k, v)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}

	// and the data survived
	if v, ok := s.Secret("prod", "github_token"); !ok || string(v) != v1FixtureSecret {
		t.Fatalf("v1 secret = %q, %v", v, ok)
	}
	svcs, err := s.Services("prod")
	if err != nil || len(svcs) != 2 {
		t.Fatalf("prod services = %+v, %v", svcs, err)
	}
	gh := svcs[0]
	if gh.Name != "github" || gh.Host != "api.github.com" || gh.Port != 443 || gh.Path != "/repos" ||
		!slices.Equal(gh.Methods, []string{"GET", "POST"}) || gh.Auth.Kind != policy.AuthBearer || gh.Auth.Credential != "github_token" {
		t.Fatalf("github service = %+v", gh)
	}
	dev, err := s.Services("dev")
	if err != nil || len(dev) != 1 || dev[0].Auth.Header != "X-Api-Key" || dev[0].Auth.Prefix != "Key " {
		t.Fatalf("dev services = %+v, %v", dev, err)
	}
	agents, err := s.Agents("prod")
	if err != nil || len(agents) != 1 || agents[0].TokenHash != v1FixtureTokenHash || agents[0].Sources[0] != netip.MustParsePrefix("10.77.1.0/24") {
		t.Fatalf("agents = %+v, %v", agents, err)
	}
	if u, err := s.UserByEmail("OWNER@example.com"); err != nil || u.Role != RoleOwner {
		t.Fatalf("owner = %+v, %v", u, err)
	}
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if d := snap.Match("prod", policy.Request{Host: "api.github.com", Port: 443, Method: "GET", Path: "/repos/x"}); !d.Allowed() {
		t.Fatalf("migrated policy denies: %+v", d)
	}
	if a, ok := snap.AgentByTokenHash(v1FixtureTokenHash); !ok || a.Name != "ci-bot" {
		t.Fatal("migrated agent not found by token")
	}

	// the migration is one more row of the same chain
	n, err := s.AuditVerify()
	if err != nil || n != v1AuditRows+1 {
		t.Fatalf("verify after migration = %d, %v", n, err)
	}
	rows, _, _ := s.AuditList(AuditQuery{Limit: 1})
	if rows[0].Action != "store.migrate" || rows[0].Target != "schema 1 to 2" {
		t.Fatalf("last row = %+v", rows[0])
	}

	// the store works normally afterwards, and a reopen does not migrate again
	if _, err := s.AddService(alice, bearer("prod", "more", "more.example.com", "github_token")); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)
	s = openTest(t, path, v1Options())
	if rows, _, _ := s.AuditList(AuditQuery{Action: "store.migrate"}); len(rows) != 1 {
		t.Fatalf("%d migration rows after reopen", len(rows))
	}
}

func TestFailedMigrationLeavesFileUntouched(t *testing.T) {
	path := v1Copy(t)
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(bucketServices)).Put(pairKey("prod", "status"), []byte(`{not json`))
	})
	before := fileHash(t, path)
	_, err := Open(path, v1Options())
	if err == nil || !strings.Contains(err.Error(), "migrate store") || !strings.Contains(err.Error(), "prod/status") {
		t.Fatalf("open with a broken v1 record: %v", err)
	}
	if fileHash(t, path) != before {
		t.Fatal("a failed migration changed the file")
	}
	if schema, hasProposals := schemaOf(t, path); schema != 1 || hasProposals {
		t.Fatalf("after a failed migration: schema %d, proposals %v", schema, hasProposals)
	}
}
