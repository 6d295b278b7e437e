package store

import (
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
)

// The schema-1 fixture, testdata/v1.db, is produced by this generator and
// committed. Regenerate it (only if the v1 layout description below is
// wrong, never to follow the current code) with:
//
//	go test ./store -run TestWriteV1Fixture -write-v1-fixture
//
// The generator writes the v1 layout with literal JSON, not with today's
// record types, so it keeps describing version 1 when the code moves on.
var writeV1Fixture = flag.Bool("write-v1-fixture", false, "regenerate store/testdata/v1.db")

const (
	v1FixturePath     = "testdata/v1.db"
	v1FixturePassword = "v1-fixture-password"
	v1FixtureSecret   = "v1-fixture-github-secret"
)

var v1FixtureTokenHash = [32]byte{0xab, 0xcd, 0xef}

func TestWriteV1Fixture(t *testing.T) {
	if !*writeV1Fixture {
		t.Skip("run with -write-v1-fixture to regenerate testdata/v1.db")
	}
	if err := os.MkdirAll(filepath.Dir(v1FixturePath), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(v1FixturePath)
	if err := writeV1(v1FixturePath, []byte(v1FixturePassword)); err != nil {
		t.Fatal(err)
	}
}

// writeV1 writes a schema-1 store: no proposals bucket, services stored as
// bare policy.Service JSON, everything else as in schema 2.
func writeV1(path string, password []byte) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	dek, keys, err := newKeys(Options{Password: password, KDF: tinyKDF})
	if err != nil {
		return err
	}
	aead, err := newSealer(dek)
	if err != nil {
		return err
	}
	at := func(min int) string {
		return time.Date(2025, 3, 4, 10, min, 0, 0, time.UTC).Format(time.RFC3339Nano)
	}
	return db.Update(func(tx *bolt.Tx) error {
		bk := map[string]*bolt.Bucket{}
		for _, name := range []string{"meta", "users", "sessions", "vaults", "credentials", "services", "agents", "audit"} {
			b, err := tx.CreateBucket([]byte(name))
			if err != nil {
				return err
			}
			bk[name] = b
		}
		put := func(b, k, v string) error { return bk[b].Put([]byte(k), []byte(v)) }
		keysJSON, err := json.Marshal(keys)
		if err != nil {
			return err
		}
		steps := []error{
			bk["meta"].Put([]byte("schema"), be64(1)),
			bk["meta"].Put([]byte("keys"), keysJSON),
			bk["meta"].Put([]byte("policy_version"), be64(7)),
			bk["users"].Put(be64(1), []byte(`{"v":1,"email":"owner@example.com","role":"owner","password_hash":"$argon2id$v=19$m=65536,t=3,p=2$c2FsdA$aGFzaA","created_at":"`+at(0)+`"}`)),
			put("vaults", "prod", `{"v":1,"created_at":"`+at(1)+`","created_by":"owner@example.com"}`),
			put("vaults", "dev", `{"v":1,"created_at":"`+at(2)+`","created_by":"owner@example.com"}`),
			// v1 services: the bare service, no "v", no creation fields
			put("services", "prod\x00github", `{"vault":"prod","name":"github","host":"api.github.com","port":443,"path":"/repos","methods":["GET","POST"],"auth":{"kind":"bearer","credential":"github_token"}}`),
			put("services", "prod\x00status", `{"vault":"prod","name":"status","host":"*.status.example.com","auth":{"kind":"none"}}`),
			put("services", "dev\x00echo", `{"vault":"dev","name":"echo","host":"echo.example.com","auth":{"kind":"header","credential":"echo_key","header":"X-Api-Key","prefix":"Key "}}`),
			put("agents", "ci-bot", `{"v":1,"name":"ci-bot","vault":"prod","sources":["10.77.1.0/24"],"token_hash":"`+hex.EncodeToString(v1FixtureTokenHash[:])+`","created_at":"`+at(5)+`","created_by":"owner@example.com"}`),
		}
		for _, err := range steps {
			if err != nil {
				return err
			}
		}
		for _, c := range []struct{ vault, key, value string }{
			{"prod", "github_token", v1FixtureSecret},
			{"dev", "echo_key", "v1-fixture-echo-secret"},
		} {
			k := pairKey(c.vault, c.key)
			ct, err := aead.seal(bucketCredentials, k, []byte(c.value))
			if err != nil {
				return err
			}
			ctJSON, _ := json.Marshal(ct)
			v := fmt.Sprintf(`{"v":1,"created_at":"%s","updated_at":"%s","updated_by":"owner@example.com","ct":%s}`, at(3), at(3), ctJSON)
			if err := bk["credentials"].Put(k, []byte(v)); err != nil {
				return err
			}
		}
		owner := audit.Actor{Kind: audit.ActorUser, Name: "owner@example.com"}
		prev := ""
		for i, ev := range []audit.Event{
			{Actor: audit.System, Action: "store.create", Target: "master password"},
			{Actor: owner, Action: "user.setup", Target: "owner@example.com"},
			{Actor: owner, Action: "vault.create", Vault: "prod", Target: "prod"},
			{Actor: owner, Action: "vault.create", Vault: "dev", Target: "dev"},
			{Actor: owner, Action: "credential.set", Vault: "prod", Target: "github_token", Credential: "github_token"},
			{Actor: owner, Action: "service.add", Vault: "prod", Target: "github", Service: "github", Credential: "github_token", Host: "api.github.com"},
			{Actor: audit.Actor{Kind: audit.ActorAgent, Name: "ci-bot"}, Action: "request", Vault: "prod", Decision: audit.DecisionAllow, Host: "api.github.com", Method: "GET", Path: "/repos/x"},
		} {
			ev.Time = time.Date(2025, 3, 4, 10, 10+i, 0, 0, time.UTC)
			if ev.Seq, err = bk["audit"].NextSequence(); err != nil {
				return err
			}
			raw, err := audit.Seal(&ev, prev)
			if err != nil {
				return err
			}
			if err := bk["audit"].Put(be64(ev.Seq), raw); err != nil {
				return err
			}
			prev = ev.Hash
		}
		return nil
	})
}

// v1AuditRows is how many rows the fixture's chain holds.
const v1AuditRows = 7
