package store

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
)

// journalChildEnv makes the test binary the crashing process of the
// journal tests (TestMain runs journalChild instead of the tests).
const journalChildEnv = "AGENT_VAULT_TEST_JOURNAL_CHILD"

func TestMain(m *testing.M) {
	if path := os.Getenv(journalChildEnv); path != "" {
		journalChild(path)
	}
	os.Exit(m.Run())
}

// journalChild opens the store, keeps bbolt's write lock so no group
// commit can happen, appends rows (they reach only the journal), prints
// each row's seq and hash, and waits to be killed.
func journalChild(path string) {
	s, err := Open(path, testOptions())
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	locked := make(chan struct{})
	go s.db.Update(func(*bolt.Tx) error { close(locked); select {} })
	<-locked
	for i := range 50 {
		// every other row is a follow-up: it is written with the next row
		ev := &audit.Event{Actor: agentActor("bot"), Action: "request", Target: fmt.Sprint(i)}
		var err error
		if i%2 == 1 {
			ev.Action = "request.complete"
			err = s.AppendFollowUp(ev)
		} else {
			err = s.Append(context.Background(), ev)
		}
		if err != nil {
			fmt.Println("append:", err)
			os.Exit(2)
		}
		fmt.Printf("row %d %s\n", ev.Seq, ev.Hash)
	}
	// the last follow-up reaches the journal with a later row
	if err := s.Append(context.Background(), &audit.Event{Actor: audit.System, Action: "x"}); err != nil {
		fmt.Println("append:", err)
		os.Exit(2)
	}
	fmt.Println("ready")
	select {}
}

// runJournalChild starts journalChild on path, reads the rows it
// appended, and kills it with SIGKILL once they are journaled.
func runJournalChild(t *testing.T, path string) map[uint64]string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), journalChildEnv+"="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	rows := map[uint64]string{}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var seq uint64
		var hash string
		if n, _ := fmt.Sscanf(sc.Text(), "row %d %s", &seq, &hash); n == 2 {
			rows[seq] = hash
			continue
		}
		if sc.Text() == "ready" {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			return rows
		}
		t.Fatalf("child: %s", sc.Text())
	}
	t.Fatal("child exited before it was ready")
	return nil
}

// The intent row of a request is journaled before Append returns: a process
// killed before any group commit loses none of its rows, and the next Open
// commits them in order, on one verifiable chain.
func TestJournalSurvivesKill(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.db")
	mustClose(t, openTest(t, path, testOptions())) // store.create, committed
	rows := runJournalChild(t, path)
	if len(rows) != 50 {
		t.Fatalf("child journaled %d rows", len(rows))
	}
	// 50 rows (half of them follow-ups) and the one after them
	if committed := rawRows(t, path); len(committed) != 1 {
		t.Fatalf("%d rows in bbolt before the replay, want only store.create: the test must crash before any commit", len(committed))
	}
	logs := &logBuffer{}
	opt := testOptions()
	opt.Logger = newTextLogger(logs)
	s := openTest(t, path, opt)
	if n, err := s.AuditVerify(); err != nil || n != 52 {
		t.Fatalf("verify after the crash = %d, %v; want 52 rows", n, err)
	}
	got, _, err := s.AuditList(AuditQuery{Agent: "bot", Limit: 1000})
	if err != nil || len(got) != 50 {
		t.Fatalf("%d bot rows after replay, %v", len(got), err)
	}
	for _, r := range got {
		if rows[r.Seq] != r.Hash {
			t.Fatalf("row %d: hash %s after replay, %s before the crash", r.Seq, r.Hash, rows[r.Seq])
		}
	}
	if !strings.Contains(logs.String(), "replayed from the journal") {
		t.Fatalf("the replay was not logged: %s", logs.String())
	}
	// the chain continues after the replayed rows
	ev := &audit.Event{Actor: audit.System, Action: "x"}
	if err := s.Append(context.Background(), ev); err != nil || ev.Seq != 53 {
		t.Fatalf("append after replay: seq %d, %v", ev.Seq, err)
	}
}

// A power loss can leave the journal's last line torn. Replay commits every
// whole row before it, keeps the damaged file for an investigator, and the
// chain still verifies.
func TestJournalTornTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.db")
	mustClose(t, openTest(t, path, testOptions()))
	rows := runJournalChild(t, path)
	jpath := journalPath(path)
	f, err := os.OpenFile(jpath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"seq":53,"time":"2026-`); err != nil {
		t.Fatal(err)
	}
	f.Close()
	s := openTest(t, path, testOptions())
	if n, err := s.AuditVerify(); err != nil || n != 52 {
		t.Fatalf("verify = %d, %v; want the 51 whole rows after store.create", n, err)
	}
	if got, _, _ := s.AuditList(AuditQuery{Action: "request.complete", Limit: 1}); len(got) != 1 || got[0].Hash != rows[51] {
		t.Fatalf("last row %+v, want the child's last whole row", got)
	}
	aside, _ := filepath.Glob(jpath + ".damaged-*")
	if len(aside) != 1 {
		t.Fatalf("damaged journal not kept: %v", aside)
	}
}

// A replayed journal whose first line does not follow the bucket (another
// store's journal, or rows altered on disk) is not committed.
func TestJournalForeignRowsNotReplayed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.db")
	mustClose(t, openTest(t, path, testOptions()))
	other := filepath.Join(t.TempDir(), "b.db")
	mustClose(t, openTest(t, other, testOptions()))
	runJournalChild(t, other)
	data, err := os.ReadFile(journalPath(other))
	if err != nil {
		t.Fatal(err)
	}
	// b's rows 2.. chain from b's store.create, not from a's
	if err := os.WriteFile(journalPath(path), data, 0o600); err != nil {
		t.Fatal(err)
	}
	s := openTest(t, path, testOptions())
	if n, err := s.AuditVerify(); err != nil || n != 1 {
		t.Fatalf("verify = %d, %v; want only a's own row", n, err)
	}
}

// With AuditSyncAlways, Append returns only once its row is committed.
func TestAuditSyncAlwaysCommitsBeforeReturn(t *testing.T) {
	opt := testOptions()
	opt.AuditSync = AuditSyncAlways
	path := filepath.Join(t.TempDir(), "a.db")
	s := openTest(t, path, opt)
	for i := range 20 {
		ev := &audit.Event{Actor: audit.System, Action: "x", Target: fmt.Sprint(i)}
		if err := s.Append(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
		var raw []byte
		s.db.View(func(tx *bolt.Tx) error { // no syncAudit: what is on disk now
			raw = append(raw, bucket(tx, bucketAudit).Get(be64(ev.Seq))...)
			return nil
		})
		if len(raw) == 0 {
			t.Fatalf("row %d not committed when Append returned", ev.Seq)
		}
	}
}

// The bucket never has a gap, even for an instant: mutations (which commit
// their row with their change) first take the rows queued before theirs.
// A reader that follows the tail by seq never skips a row.
func TestAuditBucketHasNoGaps(t *testing.T) {
	s, _ := newStore(t)
	var stop atomic.Bool
	var wg sync.WaitGroup
	gap := make(chan string, 1)
	wg.Add(1)
	go func() { // reads the bucket raw, as fast as it can
		defer wg.Done()
		for !stop.Load() {
			s.db.View(func(tx *bolt.Tx) error {
				var prev uint64
				c := bucket(tx, bucketAudit).Cursor()
				for k, _ := c.First(); k != nil; k, _ = c.Next() {
					seq := binary.BigEndian.Uint64(k)
					if prev != 0 && seq != prev+1 {
						select {
						case gap <- fmt.Sprintf("row %d follows row %d", seq, prev):
						default:
						}
					}
					prev = seq
				}
				return nil
			})
		}
	}()
	writersDone := appendConcurrently(t, s, 16, 100, nil)
	for i := range 30 {
		if _, err := s.CreateVault(alice, fmt.Sprintf("v%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	writersDone()
	stop.Store(true)
	wg.Wait()
	select {
	case g := <-gap:
		t.Fatal("gap in the audit bucket: " + g)
	default:
	}
	if n, err := s.AuditVerify(); err != nil || n != 1600+30+1 {
		t.Fatalf("verify = %d, %v", n, err)
	}
}

// The journal is rotated once large; the old file goes once its rows are
// committed, and Close leaves no journal behind.
func TestJournalRotates(t *testing.T) {
	old := rotateSize
	rotateSize = 4 << 10
	t.Cleanup(func() { rotateSize = old })
	s, path := newStore(t)
	appendConcurrently(t, s, 8, 250, nil)()
	if n, err := s.AuditVerify(); err != nil || n != 2001 {
		t.Fatalf("verify = %d, %v", n, err)
	}
	if fi, err := os.Stat(journalPath(path)); err != nil || fi.Size() > 64<<10 {
		t.Fatalf("journal not rotated: %v, %v", fi, err)
	}
	mustClose(t, s)
	left, _ := filepath.Glob(journalPath(path) + "*")
	if len(left) != 0 {
		t.Fatalf("journal files left after Close: %v", left)
	}
}

// rawRows reads the audit bucket of a closed store file directly.
func rawRows(t *testing.T, path string) map[uint64]json.RawMessage {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows := map[uint64]json.RawMessage{}
	db.View(func(tx *bolt.Tx) error {
		return bucket(tx, bucketAudit).ForEach(func(k, v []byte) error {
			rows[binary.BigEndian.Uint64(k)] = append(json.RawMessage(nil), v...)
			return nil
		})
	})
	return rows
}

// A journal write that fails once refuses that one row and nothing more:
// follow-up rows waiting for a write go out with the next row, and the
// chain has no gap.
func TestJournalWriteFailureIsNotPermanent(t *testing.T) {
	s, path := newStore(t)
	ctx := context.Background()
	fu := &audit.Event{Actor: agentActor("bot"), Action: "request.complete"}
	if err := s.AppendFollowUp(fu); err != nil {
		t.Fatal(err)
	}
	// the disk refuses the next write
	ro, err := os.Open(journalPath(path))
	if err != nil {
		t.Fatal(err)
	}
	s.jr.mu.Lock()
	good := s.jr.file
	s.jr.file = ro
	s.jr.mu.Unlock()
	if err := s.Append(ctx, &audit.Event{Actor: audit.System, Action: "refused"}); err == nil {
		t.Fatal("an append whose journal write failed succeeded")
	}
	s.jr.mu.Lock()
	s.jr.file = good
	s.jr.mu.Unlock()
	ro.Close()
	ev := &audit.Event{Actor: audit.System, Action: "after"}
	if err := s.Append(ctx, ev); err != nil {
		t.Fatalf("append after the disk recovered: %v", err)
	}
	if ev.Seq != fu.Seq+1 {
		t.Fatalf("seq %d after follow-up %d: the refused row left a gap", ev.Seq, fu.Seq)
	}
	if n, err := s.AuditVerify(); err != nil || n != 3 {
		t.Fatalf("verify = %d, %v; want store.create, the follow-up and the last row", n, err)
	}
}

// appendConcurrently starts writers goroutines appending each request rows
// (agent wN, target i) and returns the wait for them. appended, if not nil,
// sees each appended row (from the writer's goroutine).
func appendConcurrently(t *testing.T, s *Store, writers, each int, appended func(*audit.Event)) (wait func()) {
	t.Helper()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				ev := &audit.Event{Actor: agentActor(fmt.Sprintf("w%d", w)), Action: "request", Target: fmt.Sprint(i)}
				if err := s.Append(context.Background(), ev); err != nil {
					t.Error(err)
					return
				}
				if appended != nil {
					appended(ev)
				}
			}
		}()
	}
	return wg.Wait
}
