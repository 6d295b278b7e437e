package store

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/policy"
)

func TestCiphertextSwappedBetweenRecordsDoesNotDecrypt(t *testing.T) {
	path := closedStoreWithTwoCredentials(t)

	// swap the two stored values in the bbolt file
	ka, kb := pairKey("prod", "alpha"), pairKey("prod", "beta")
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucketCredentials))
		va, vb := bytes.Clone(b.Get(ka)), bytes.Clone(b.Get(kb))
		if err := b.Put(ka, vb); err != nil {
			return err
		}
		return b.Put(kb, va)
	})

	logs := &logBuffer{}
	opt := testOptions()
	opt.Logger = newTextLogger(logs)
	s := openTest(t, path, opt)
	for _, k := range []string{"alpha", "beta"} {
		if v, ok := s.Secret("prod", k); ok {
			t.Fatalf("swapped credential %s decrypted to %q", k, v)
		}
	}
	if got := undecryptableKeys(t, s); !slices.Equal(got, []string{"alpha", "beta"}) {
		t.Fatalf("undecryptable = %v", got)
	}
	if strings.Contains(logs.String(), "value-of-") {
		t.Fatal("a log line holds a credential value")
	}
	if !strings.Contains(logs.String(), "prod/alpha") {
		t.Fatalf("the damaged credential is not logged by name: %q", logs.String())
	}

	// the record's own key opens it; the other's does not
	var rec credentialRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		return jsonUnmarshal(tx.Bucket([]byte(bucketCredentials)).Get(ka), &rec)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.aead.open(bucketCredentials, ka, rec.Ciphertext); !errors.Is(err, errDecrypt) {
		t.Fatalf("moved ciphertext opened under its new key: %v", err)
	}
	if pt, err := s.aead.open(bucketCredentials, kb, rec.Ciphertext); err != nil || string(pt) != "value-of-beta" {
		t.Fatalf("ciphertext does not open under its original key: %q %v", pt, err)
	}
	if _, err := s.aead.open(bucketServices, kb, rec.Ciphertext); err == nil {
		t.Fatal("ciphertext opened under another bucket name")
	}

	// setting the value again repairs the record
	if _, err := s.SetCredential(alice, "prod", "alpha", []byte("fresh")); err != nil {
		t.Fatal(err)
	}
	if v, ok := s.Secret("prod", "alpha"); !ok || string(v) != "fresh" {
		t.Fatalf("repaired secret = %q %v", v, ok)
	}
	if got := undecryptableKeys(t, s); !slices.Equal(got, []string{"beta"}) {
		t.Fatalf("undecryptable after repair = %v", got)
	}
}

// undecryptableKeys are the credentials of vault prod that Credentials
// marks undecryptable.
func undecryptableKeys(t *testing.T, s *Store) []string {
	t.Helper()
	cs, err := s.Credentials("prod")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range cs {
		if c.Undecryptable {
			out = append(out, c.Key)
		}
	}
	return out
}

func TestSentinelSecretNeverInClear(t *testing.T) {
	const sentinel = "SENTINEL-7f3a9c-do-not-leak"
	const caSentinel = "CA-KEY-SENTINEL-41b2"
	logs := &logBuffer{}
	path := t.TempDir() + "/s.db"
	opt := testOptions()
	opt.Logger = newTextLogger(logs)
	s := openTest(t, path, opt)
	if _, err := s.CreateVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetCredential(alice, "prod", "token", []byte(sentinel)); err != nil {
		t.Fatal(err)
	}
	if err := s.PutCA([]byte("cert"), []byte(caSentinel)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddService(alice, policy.Service{Vault: "prod", Name: "api", Host: "api.example.com", Auth: policy.Auth{Kind: policy.AuthBearer, Credential: "token"}}); err != nil {
		t.Fatal(err)
	}
	// errors about a value never quote it
	long := bytes.Repeat([]byte(sentinel), MaxSecretLen/len(sentinel)+1)
	_, err := s.SetCredential(alice, "prod", "big", long)
	if !errors.Is(err, ErrInvalid) || strings.Contains(err.Error(), sentinel) {
		t.Fatalf("oversized value error = %v", err)
	}
	_, err = s.SetCredential(alice, "nope", "token", []byte(sentinel))
	if !errors.Is(err, ErrNotFound) || strings.Contains(err.Error(), sentinel) {
		t.Fatalf("missing vault error = %v", err)
	}
	rows, _, err := s.AuditList(AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if strings.Contains(r.Hash+r.Target+r.Credential+r.Reason, sentinel) {
			t.Fatalf("audit row holds the secret: %+v", r)
		}
	}
	mustClose(t, s)

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, needle := range []string{sentinel, caSentinel} {
		for _, form := range []string{needle, base64.StdEncoding.EncodeToString([]byte(needle)), hex.EncodeToString([]byte(needle))} {
			if bytes.Contains(raw, []byte(form)) {
				t.Fatalf("the store file holds %q in clear", form)
			}
		}
		if strings.Contains(logs.String(), needle) {
			t.Fatalf("a log line holds %q", needle)
		}
	}
	// the values are really there, encrypted
	s = openTest(t, path, testOptions())
	if v, ok := s.Secret("prod", "token"); !ok || string(v) != sentinel {
		t.Fatal("sentinel did not round-trip")
	}
	if _, key, err := s.CA(); err != nil || string(key) != caSentinel {
		t.Fatalf("ca key did not round-trip: %v", err)
	}
}

func TestCAKeyBoundToItsRecord(t *testing.T) {
	s, path := newStore(t)
	if _, _, err := s.CA(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CA before PutCA: %v", err)
	}
	if err := s.PutCA(nil, []byte("k")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty cert: %v", err)
	}
	if err := s.PutCA([]byte("cert"), []byte("key")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetCredential(alice, "prod", "token", []byte("tok")); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)
	// move the credential's ciphertext into the CA key slot
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		var rec credentialRecord
		if err := jsonUnmarshal(tx.Bucket([]byte(bucketCredentials)).Get(pairKey("prod", "token")), &rec); err != nil {
			return err
		}
		return tx.Bucket([]byte(bucketMeta)).Put(metaCAKey, rec.Ciphertext)
	})
	s = openTest(t, path, testOptions())
	if _, _, err := s.CA(); err == nil || !strings.Contains(err.Error(), "does not authenticate") {
		t.Fatalf("CA with a moved ciphertext: %v", err)
	}
}

// A credential record whose JSON was altered in the file is listed as
// undecryptable; the vault's other credentials are listed as they are.
func TestAlteredCredentialRecordIsListed(t *testing.T) {
	path := closedStoreWithTwoCredentials(t)
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(bucketCredentials)).Put(pairKey("prod", "alpha"), []byte("{not json"))
	})
	s := openTest(t, path, testOptions())
	cs, err := s.Credentials("prod")
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || cs[0].Key != "alpha" || !cs[0].Undecryptable || cs[1].Key != "beta" || cs[1].Undecryptable {
		t.Fatalf("credentials = %+v", cs)
	}
	if _, ok := s.Secret("prod", "alpha"); ok {
		t.Fatal("the altered credential is in the cache")
	}
}

// closedStoreWithTwoCredentials is a closed store file with vault prod and
// its credentials alpha and beta ("value-of-alpha", "value-of-beta").
func closedStoreWithTwoCredentials(t *testing.T) string {
	t.Helper()
	s, path := newStore(t)
	if _, err := s.CreateVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"alpha", "beta"} {
		if _, err := s.SetCredential(alice, "prod", k, []byte("value-of-"+k)); err != nil {
			t.Fatal(err)
		}
	}
	mustClose(t, s)
	return path
}
