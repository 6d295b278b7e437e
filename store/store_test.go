package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/policy"
)

func TestOpenCreatesPrivateFileAndPersists(t *testing.T) {
	s, path := newStore(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("file mode = %v, want 0600", fi.Mode().Perm())
	}
	if s.Insecure() {
		t.Fatal("a store with a password reports Insecure")
	}
	if _, err := s.Setup("Alice@Example.com", "$argon2id$fake"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetCredential(alice, "prod", "token", []byte("persist-me")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddService(alice, policy.Service{Vault: "prod", Name: "api", Host: "api.example.com", Auth: policy.Auth{Kind: policy.AuthBearer, Credential: "token"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateAgent(alice, policy.Agent{Name: "bot", Vault: "prod", TokenHash: [32]byte{1}}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutCA([]byte("cert-der"), []byte("key-der")); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)
	if _, err := s.Vaults(); err == nil {
		t.Fatal("a closed store still answers")
	}
	if _, ok := s.Secret("prod", "token"); ok {
		t.Fatal("a closed store still serves secrets")
	}

	s = openTest(t, path, testOptions())
	if v, ok := s.Secret("prod", "token"); !ok || string(v) != "persist-me" {
		t.Fatalf("secret after reopen = %q, %v", v, ok)
	}
	vaults, err := s.Vaults()
	if err != nil || len(vaults) != 1 || vaults[0].Name != "prod" || vaults[0].CreatedBy != alice.Name {
		t.Fatalf("vaults = %+v, %v", vaults, err)
	}
	svcs, err := s.Services("prod")
	if err != nil || len(svcs) != 1 || svcs[0].Host != "api.example.com" {
		t.Fatalf("services = %+v, %v", svcs, err)
	}
	agents, err := s.Agents("")
	if err != nil || len(agents) != 1 || agents[0].TokenHash != ([32]byte{1}) {
		t.Fatalf("agents = %+v, %v", agents, err)
	}
	if u, err := s.UserByEmail("alice@example.com"); err != nil || u.Role != RoleOwner {
		t.Fatalf("user = %+v, %v", u, err)
	}
	cert, key, err := s.CA()
	if err != nil || string(cert) != "cert-der" || string(key) != "key-der" {
		t.Fatalf("ca = %q %q %v", cert, key, err)
	}
	if n, err := s.AuditVerify(); err != nil || n < 7 {
		t.Fatalf("audit verify = %d, %v", n, err)
	}
}

func TestWrongPasswordLeavesFileByteIdentical(t *testing.T) {
	s, path := newStore(t)
	if _, err := s.CreateVault(alice, "prod"); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)
	before := fileHash(t, path)

	opt := testOptions()
	opt.Password = []byte("not the password")
	_, err := Open(path, opt)
	if !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("open with a wrong password: %v, want ErrWrongPassword", err)
	}
	if !strings.Contains(err.Error(), "check the master password") {
		t.Fatalf("error %q does not tell the operator what to check", err)
	}
	if fileHash(t, path) != before {
		t.Fatal("a failed open changed the file")
	}
	// no password at all
	opt.Password = nil
	if _, err := Open(path, opt); !errors.Is(err, ErrPasswordRequired) {
		t.Fatalf("open without a password: %v, want ErrPasswordRequired", err)
	}
	opt.Insecure = true
	if _, err := Open(path, opt); !errors.Is(err, ErrPasswordRequired) {
		t.Fatalf("open an encrypted store in passwordless mode: %v, want ErrPasswordRequired", err)
	}
	if fileHash(t, path) != before {
		t.Fatal("a failed open changed the file")
	}
	openTest(t, path, testOptions()) // the right password still works
}

func TestSecondOpenIsLocked(t *testing.T) {
	_, path := newStore(t)
	opt := testOptions()
	opt.LockTimeout = 100 * time.Millisecond
	_, err := Open(path, opt)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), "another agent-vault server") {
		t.Fatalf("locked error %q does not say what to look for", err)
	}
}

func TestNewerSchemaRefusedAndUntouched(t *testing.T) {
	s, path := newStore(t)
	mustClose(t, s)
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(bucketMeta)).Put(metaSchema, be64(SchemaVersion+1))
	})
	before := fileHash(t, path)
	_, err := Open(path, testOptions())
	if !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("open newer schema: %v, want ErrNewerSchema", err)
	}
	if fileHash(t, path) != before {
		t.Fatal("refusing a newer schema changed the file")
	}
}

func TestDefaultKDFIsRecorded(t *testing.T) {
	if testing.Short() {
		t.Skip("uses the real 256 MiB Argon2id parameters")
	}
	path := filepath.Join(t.TempDir(), "default.db")
	opt := testOptions()
	opt.KDF = KDFParams{} // zero means DefaultKDF
	s := openTest(t, path, opt)
	mustClose(t, s)
	var rec keysRecord
	rawView(t, path, func(tx *bolt.Tx) error {
		return json.Unmarshal(tx.Bucket([]byte(bucketMeta)).Get(metaKeys), &rec)
	})
	if rec.KDF != DefaultKDF || DefaultKDF != (KDFParams{MemoryKiB: 256 * 1024, Time: 2, Threads: 2}) {
		t.Fatalf("recorded kdf = %+v, want %+v", rec.KDF, DefaultKDF)
	}
	if len(rec.Salt) != saltLen || len(rec.WrappedDEK) == 0 || rec.Passwordless || rec.DEK != nil {
		t.Fatalf("key record = %+v", rec)
	}
}

func TestStoredKDFIsUsedNotOptions(t *testing.T) {
	s, path := newStore(t)
	mustClose(t, s)
	opt := testOptions()
	opt.KDF = KDFParams{MemoryKiB: 128, Time: 3, Threads: 1} // ignored for an existing file
	openTest(t, path, opt)
}

func TestPasswordlessMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "demo.db")
	logs := &logBuffer{}
	opt := Options{Insecure: true, Logger: newTextLogger(logs)}
	s := openTest(t, path, opt)
	if !s.Insecure() {
		t.Fatal("passwordless store does not report Insecure")
	}
	if !strings.Contains(logs.String(), "NO MASTER PASSWORD") {
		t.Fatalf("passwordless start is not loud: %q", logs.String())
	}
	if _, err := s.CreateVault(alice, "demo"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetCredential(alice, "demo", "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)
	before := fileHash(t, path)

	_, err := Open(path, testOptions()) // with a password
	if !errors.Is(err, ErrPasswordless) {
		t.Fatalf("open passwordless store with a password: %v", err)
	}
	_, err = Open(path, Options{KDF: tinyKDF}) // neither
	if !errors.Is(err, ErrPasswordless) {
		t.Fatalf("open passwordless store without Insecure: %v", err)
	}
	if fileHash(t, path) != before {
		t.Fatal("a failed open changed the file")
	}
	s = openTest(t, path, Options{Insecure: true, Logger: discardLogger()})
	if v, ok := s.Secret("demo", "k"); !ok || string(v) != "v" {
		t.Fatalf("secret = %q %v", v, ok)
	}
}

func TestOpenRefusesBadOptionsWithoutCreatingAFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "new.db")
	if _, err := Open(path, Options{}); !errors.Is(err, ErrPasswordRequired) {
		t.Fatalf("new store without password: %v", err)
	}
	if _, err := Open(path, Options{Insecure: true, Password: []byte("x")}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("password and insecure: %v", err)
	}
	if _, err := Open(path, Options{Password: []byte("x"), KDF: KDFParams{MemoryKiB: 1, Time: 1, Threads: 1}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad kdf: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("a failed open left a file behind: %v", err)
	}
}

func TestOpenRefusesForeignBoltFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "other.db")
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("something"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("v"))
	})
	before := fileHash(t, path)
	_, err := Open(path, testOptions())
	if err == nil || !strings.Contains(err.Error(), "not an agent-vault store") {
		t.Fatalf("open foreign file: %v", err)
	}
	if fileHash(t, path) != before {
		t.Fatal("refusing a foreign file changed it")
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("refusing a foreign file removed it: %v", err)
	}
}

func TestOpenTightensFileMode(t *testing.T) {
	s, path := newStore(t)
	mustClose(t, s)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	openTest(t, path, testOptions())
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode after open = %v, want 0600", fi.Mode().Perm())
	}
}

func TestClosedStoreFailsCleanly(t *testing.T) {
	s, _ := newStore(t)
	mustClose(t, s)
	if err := s.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
	if _, err := s.CreateVault(alice, "x"); err == nil || !bytes.Contains([]byte(err.Error()), []byte("closed")) {
		t.Fatalf("create vault on a closed store: %v", err)
	}
}
