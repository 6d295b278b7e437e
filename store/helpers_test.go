package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
)

// tinyKDF keeps tests fast; one test checks DefaultKDF is recorded.
var tinyKDF = KDFParams{MemoryKiB: 64, Time: 1, Threads: 1}

var testPassword = []byte("correct horse battery staple")

var alice = audit.Actor{Kind: audit.ActorUser, Name: "alice@example.com"}

// logBuffer collects a store's log lines so tests can grep them.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testOptions() Options {
	return Options{Password: testPassword, KDF: tinyKDF, LockTimeout: 2 * time.Second, Logger: discardLogger()}
}

// openTest opens path and, at cleanup, closes the store (flushing the audit
// writer) and runs bbolt's consistency check (tx.Check in db.View) on the
// file. The check runs after Close because bbolt's Check reads the freelist
// without the lock a concurrent write transaction takes (the race detector
// flags it while the audit writer is busy).
func openTest(t testing.TB, path string, opt Options) *Store {
	t.Helper()
	s, err := Open(path, opt)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() {
		s.closeMu.Lock()
		closed := s.closed
		s.closeMu.Unlock()
		if !closed {
			if err := s.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
		}
		checkFile(t, path)
	})
	return s
}

// newStore makes a fresh store in a temp dir.
func newStore(t testing.TB) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent-vault.db")
	return openTest(t, path, testOptions()), path
}

func checkDB(t testing.TB, db *bolt.DB) {
	t.Helper()
	err := db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			t.Errorf("bbolt check: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Errorf("bbolt check: %v", err)
	}
}

// checkFile runs bbolt's check on a closed store file.
func checkFile(t testing.TB, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Errorf("open %s for check: %v", path, err)
		return
	}
	defer db.Close()
	checkDB(t, db)
}

// rawUpdate edits a closed store file with bbolt directly.
func rawUpdate(t testing.TB, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("open raw %s: %v", path, err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatalf("raw update: %v", err)
	}
}

// rawView reads a closed store file with bbolt directly.
func rawView(t testing.TB, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatalf("open raw %s: %v", path, err)
	}
	defer db.Close()
	if err := db.View(fn); err != nil {
		t.Fatalf("raw view: %v", err)
	}
}

func fileHash(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func mustClose(t testing.TB, s *Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
}

func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func newTextLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
