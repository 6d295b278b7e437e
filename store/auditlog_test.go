package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
)

func agentActor(name string) audit.Actor { return audit.Actor{Kind: audit.ActorAgent, Name: name} }

func TestAppendFillsTheRow(t *testing.T) {
	s, _ := newStore(t)
	local := time.Date(2031, 5, 6, 7, 8, 9, 10, time.FixedZone("Y", -7200))
	ev := &audit.Event{Time: local, Actor: agentActor("bot"), Vault: "prod", Action: "request", Decision: audit.DecisionAllow, Host: "api.example.com"}
	if err := s.Append(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if ev.Seq != 2 || ev.Hash == "" || ev.PrevHash == "" || ev.Time.Location() != time.UTC || !ev.Time.Equal(local) {
		t.Fatalf("appended = %+v", ev)
	}
	ev2 := &audit.Event{Actor: agentActor("bot"), Action: "request"}
	if err := s.Append(context.Background(), ev2); err != nil {
		t.Fatal(err)
	}
	if ev2.Time.IsZero() || ev2.PrevHash != ev.Hash || ev2.Seq != 3 {
		t.Fatalf("second = %+v", ev2)
	}
	rows, _, err := s.AuditList(AuditQuery{Limit: 2})
	if err != nil || len(rows) != 2 || rows[0].Hash != ev2.Hash || rows[1].Hash != ev.Hash {
		t.Fatalf("list = %+v, %v", rows, err)
	}
}

// TestGroupCommit64Writers: 64 concurrent writers, every event committed,
// one chain, fewer transactions than events.
func TestGroupCommit64Writers(t *testing.T) {
	s, path := newStore(t)
	const writers, each = 64, 20
	seqs := make(chan uint64, writers*each)
	wait := appendConcurrently(t, s, writers, each, func(ev *audit.Event) { seqs <- ev.Seq })
	// store mutations interleave with the writer and extend the same chain
	for i := range 10 {
		if _, err := s.CreateVault(alice, fmt.Sprintf("v%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	wait()
	close(seqs)
	seen := map[uint64]bool{}
	for q := range seqs {
		if seen[q] {
			t.Fatalf("seq %d handed out twice", q)
		}
		seen[q] = true
	}
	if len(seen) != writers*each {
		t.Fatalf("%d events committed, want %d", len(seen), writers*each)
	}
	st := s.AuditWriterStats()
	if st.Events < writers*each {
		t.Fatalf("%d rows committed, want at least %d", st.Events, writers*each)
	}
	if st.Batches >= st.Events {
		t.Fatalf("no group commit: %d transactions for %d events", st.Batches, st.Events)
	}
	t.Logf("%d events in %d transactions", st.Events, st.Batches)
	total := uint64(writers*each + 10 + 1) // + vaults + store.create
	if n, err := s.AuditVerify(); err != nil || n != total {
		t.Fatalf("verify = %d, %v (want %d rows)", n, err, total)
	}
	for w := range writers {
		rows, _, err := s.AuditList(AuditQuery{Agent: fmt.Sprintf("w%d", w), Limit: 1000})
		if err != nil || len(rows) != each {
			t.Fatalf("writer %d has %d rows: %v", w, len(rows), err)
		}
	}
	mustClose(t, s)
	s = openTest(t, path, testOptions())
	if n, err := s.AuditVerify(); err != nil || n != total {
		t.Fatalf("verify after reopen = %d, %v", n, err)
	}
}

func TestTamperedRowIsNamed(t *testing.T) {
	s, path := newStore(t)
	var target uint64
	for i := range 30 {
		ev := &audit.Event{Actor: agentActor("bot"), Action: "request", Target: fmt.Sprintf("row-marker-%03d", i)}
		if err := s.Append(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
		if i == 17 {
			target = ev.Seq
		}
	}
	if _, err := s.AuditVerify(); err != nil {
		t.Fatal(err)
	}
	mustClose(t, s)

	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	marker := []byte("row-marker-017")
	// bbolt copies pages on write, so freed pages may hold stale copies of
	// the row; alter every copy (same length: bbolt's structure is intact)
	if bytes.Count(raw, marker) == 0 {
		t.Fatal("marker not found in the file")
	}
	raw = bytes.ReplaceAll(raw, marker, []byte("row-marker-019"))
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	s = openTest(t, path, testOptions())
	n, err := s.AuditVerify()
	var broken *audit.BrokenError
	if !errors.As(err, &broken) {
		t.Fatalf("verify after tampering: %d, %v", n, err)
	}
	if broken.Seq != target || n != target-1 {
		t.Fatalf("broken at %d after %d good rows, want %d", broken.Seq, n, target)
	}
}

func TestRemovedRowIsNamed(t *testing.T) {
	s, path := newStore(t)
	for range 5 {
		if err := s.Append(context.Background(), &audit.Event{Actor: audit.System, Action: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	mustClose(t, s)
	rawUpdate(t, path, func(tx *bolt.Tx) error { return tx.Bucket([]byte(bucketAudit)).Delete(be64(3)) })
	s = openTest(t, path, testOptions())
	_, err := s.AuditVerify()
	var broken *audit.BrokenError
	if !errors.As(err, &broken) || broken.Seq != 4 {
		t.Fatalf("verify with a removed row: %v", err)
	}
}

func TestAuditListFiltersAndPages(t *testing.T) {
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s, _ := newStore(t)
	for i := range 50 {
		ev := &audit.Event{Time: base.Add(time.Duration(i) * time.Minute), Action: "request", Vault: "prod"}
		switch {
		case i%2 == 0:
			ev.Actor, ev.Decision = agentActor("even"), audit.DecisionAllow
		default:
			ev.Actor, ev.Decision = audit.Actor{Kind: audit.ActorUser, Name: "even"}, audit.DecisionDeny
			ev.Vault = "dev"
		}
		if err := s.Append(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	count := func(q AuditQuery) int {
		t.Helper()
		rows, _, err := s.AuditList(q)
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(rows); i++ {
			if rows[i].Seq >= rows[i-1].Seq {
				t.Fatal("rows are not newest first")
			}
		}
		return len(rows)
	}
	cases := []struct {
		q    AuditQuery
		want int
	}{
		{AuditQuery{}, 51},
		{AuditQuery{Agent: "even"}, 25},
		{AuditQuery{User: "even"}, 25},
		{AuditQuery{Vault: "dev"}, 25},
		{AuditQuery{Decision: "allow"}, 25},
		{AuditQuery{Action: "request"}, 50},
		{AuditQuery{Action: "store.create"}, 1},
		{AuditQuery{Since: base.Add(40 * time.Minute)}, 10}, // store.create is stamped now, before base
		{AuditQuery{Since: base.Add(40 * time.Minute), Until: base.Add(45 * time.Minute)}, 5},
		{AuditQuery{Limit: 7}, 7},
		{AuditQuery{Limit: 5000}, 51},
		{AuditQuery{Agent: "even", Decision: "deny"}, 0},
	}
	for _, c := range cases {
		if got := count(c.q); got != c.want {
			t.Errorf("%+v: %d rows, want %d", c.q, got, c.want)
		}
	}
	// page through the agent's rows 10 at a time
	var all []uint64
	q := AuditQuery{Agent: "even", Limit: 10}
	for range 10 {
		rows, next, err := s.AuditList(q)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			all = append(all, r.Seq)
		}
		if next == 0 {
			break
		}
		if next != rows[len(rows)-1].Seq {
			t.Fatalf("next = %d, last row %d", next, rows[len(rows)-1].Seq)
		}
		q.Cursor = next
	}
	if len(all) != 25 {
		t.Fatalf("paged %d rows, want 25: %v", len(all), all)
	}
	for i := 1; i < len(all); i++ {
		if all[i] >= all[i-1] {
			t.Fatalf("pages overlap or are out of order: %v", all)
		}
	}
	// a cursor past the end starts at the newest row
	if rows, _, _ := s.AuditList(AuditQuery{Cursor: 1 << 40, Limit: 1}); len(rows) != 1 || rows[0].Seq != 51 {
		t.Fatalf("cursor past the end: %+v", rows)
	}
}

func TestAppendFailsClosed(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []AuditSync{AuditSyncBatch, AuditSyncAlways} {
		t.Run(mode.String(), func(t *testing.T) {
			opt := testOptions()
			opt.AuditSync = mode
			s := openTest(t, filepath.Join(t.TempDir(), "a.db"), opt)
			// the disk stops taking commits
			if err := s.db.Close(); err != nil {
				t.Fatal(err)
			}
			err := s.Append(ctx, &audit.Event{Actor: audit.System, Action: "x"})
			if mode == AuditSyncAlways && err == nil {
				t.Fatal("append waiting for its commit succeeded on a closed database")
			}
			// batch mode journaled that row; the failed commit that follows
			// refuses every later append until a commit succeeds
			deadline := time.Now().Add(10 * time.Second) // liveness only
			for err == nil && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
				err = s.Append(ctx, &audit.Event{Actor: audit.System, Action: "x"})
			}
			if err == nil || !strings.Contains(err.Error(), "cannot be committed") {
				t.Fatalf("append after a failed commit: %v", err)
			}
			if _, err := s.CreateVault(alice, "v"); err == nil {
				t.Fatal("mutation on a closed database succeeded")
			}
			_ = s.Close()
			if err := s.Append(ctx, &audit.Event{Actor: audit.System, Action: "x"}); !errors.Is(err, ErrClosed) {
				t.Fatalf("append after close: %v", err)
			}
		})
	}
}

// TestCloseFlushesWriter: Close waits for queued events; every Append either
// committed (and its row is on disk) or was refused with ErrClosed.
func TestCloseFlushesWriter(t *testing.T) {
	s, path := newStore(t)
	const n = 200
	var wg sync.WaitGroup
	type result struct {
		ev  audit.Event
		err error
	}
	results := make([]result, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ev := &audit.Event{Actor: audit.System, Action: "x", Target: fmt.Sprint(i)}
			err := s.Append(context.Background(), ev)
			results[i] = result{*ev, err}
		}()
	}
	close(start)
	time.Sleep(time.Millisecond) // let some, not necessarily all, enqueue
	mustClose(t, s)
	wg.Wait()
	// Close itself committed them: the bucket holds every accepted row and
	// no journal is left for a reopen to replay
	onDisk := rawRows(t, path)
	for i, r := range results {
		if r.err == nil && onDisk[r.ev.Seq] == nil {
			t.Fatalf("append %d (seq %d) succeeded but Close did not commit it", i, r.ev.Seq)
		}
	}
	if left, _ := filepath.Glob(journalPath(path) + "*"); len(left) != 0 {
		t.Fatalf("journal files left after Close: %v", left)
	}

	s = openTest(t, path, testOptions())
	committed := 0
	for i, r := range results {
		switch {
		case r.err == nil:
			committed++
			rows, _, err := s.AuditList(AuditQuery{Cursor: r.ev.Seq + 1, Limit: 1})
			if err != nil || len(rows) != 1 || rows[0].Hash != r.ev.Hash || rows[0].Target != fmt.Sprint(i) {
				t.Fatalf("committed event %d not on disk: %+v %v", i, rows, err)
			}
		case errors.Is(r.err, ErrClosed):
		default:
			t.Fatalf("append %d: %v", i, r.err)
		}
	}
	if n, err := s.AuditVerify(); err != nil || n != uint64(committed+1) {
		t.Fatalf("verify = %d, %v; %d committed", n, err, committed)
	}
	t.Logf("%d of %d appends committed before close", committed, n)
}

func TestAuditAppendedPokes(t *testing.T) {
	s, _ := newStore(t)
	ch, cancel := s.AuditAppended()
	defer cancel()
	if err := s.Append(context.Background(), &audit.Event{Actor: audit.System, Action: "x"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("no poke after Append")
	}
}
