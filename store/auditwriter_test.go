package store

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/audit"
)

// The writer holds follow-up rows (Ref set) so they share the next commit.
// These tests set followUpHold before Open; store tests do not run in
// parallel.

func withHold(t *testing.T, d time.Duration) {
	t.Helper()
	old := followUpHold
	followUpHold = d
	t.Cleanup(func() { followUpHold = old })
}

func followUp(ref uint64) audit.Event {
	ev := benchEvent()
	ev.Action, ev.Ref, ev.Status = "request.complete", ref, 200
	return ev
}

// enqueue puts a request on the writer's queue as Append does, and returns
// once the writer can see it.
func enqueue(s *Store, ev audit.Event) *appendReq {
	req := &appendReq{ev: ev, done: make(chan appendRes, 1)}
	req.ev.Time = time.Now().UTC()
	s.queue <- req
	return req
}

func TestFollowUpRowRidesWithNextEvent(t *testing.T) {
	withHold(t, time.Hour) // never alone within the test
	s := openTest(t, filepath.Join(t.TempDir(), "a.db"), testOptions())
	before := s.AuditWriterStats()
	held := enqueue(s, followUp(7))
	ev := benchEvent()
	if err := s.Append(context.Background(), &ev); err != nil {
		t.Fatal(err)
	}
	var res appendRes
	select {
	case res = <-held.done:
	default:
		t.Fatal("the held follow-up row was not committed with the next event")
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.ev.Seq == 0 || res.ev.Seq >= ev.Seq {
		t.Fatalf("follow-up seq %d, next event seq %d: the held row must come first", res.ev.Seq, ev.Seq)
	}
	after := s.AuditWriterStats()
	if b, e := after.Batches-before.Batches, after.Events-before.Events; b != 1 || e != 2 {
		t.Fatalf("%d events in %d transactions, want 2 in 1", e, b)
	}
	if n, err := s.AuditVerify(); err != nil || n == 0 {
		t.Fatalf("verify: %d rows, %v", n, err)
	}
}

func TestFollowUpRowCommitsAloneAfterHold(t *testing.T) {
	withHold(t, time.Millisecond)
	s := openTest(t, filepath.Join(t.TempDir(), "a.db"), testOptions())
	ev := followUp(3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // liveness only
	defer cancel()
	if err := s.Append(ctx, &ev); err != nil {
		t.Fatal(err)
	}
	rows, _, err := s.AuditList(AuditQuery{Action: "request.complete"})
	if err != nil || len(rows) != 1 || rows[0].Ref != 3 {
		t.Fatalf("rows %+v, err %v", rows, err)
	}
}

func TestCloseCommitsHeldFollowUps(t *testing.T) {
	withHold(t, time.Hour)
	path := filepath.Join(t.TempDir(), "a.db")
	s := openTest(t, path, testOptions())
	var reqs []*appendReq
	for i := uint64(1); i <= 3; i++ {
		reqs = append(reqs, enqueue(s, followUp(i)))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, r := range reqs {
		select {
		case res := <-r.done:
			if res.err != nil {
				t.Fatal(res.err)
			}
		default:
			t.Fatal("Close returned before a held follow-up row was committed")
		}
	}
	s2 := openTest(t, path, testOptions())
	rows, _, err := s2.AuditList(AuditQuery{Action: "request.complete"})
	if err != nil || len(rows) != 3 {
		t.Fatalf("%d follow-up rows after reopening, want 3 (err %v)", len(rows), err)
	}
	if _, err := s2.AuditVerify(); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkAuditRequestPairs is the data path at one request in flight: an
// intent row the request waits for, then its completion row appended in the
// background. It reports transactions per request (1 when completions ride
// with the next intent, 2 when each commits alone).
func BenchmarkAuditRequestPairs(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	before := s.AuditWriterStats()
	done := make(chan error, 1024)
	pending := 0
	b.ResetTimer()
	for b.Loop() {
		ev := benchEvent()
		if err := s.Append(ctx, &ev); err != nil {
			b.Fatal(err)
		}
		c := followUp(ev.Seq)
		pending++
		go func() { done <- s.Append(ctx, &c) }()
		for pending > 512 { // bounded: collect finished completions
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			pending--
		}
	}
	for ; pending > 0; pending-- {
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	st := s.AuditWriterStats()
	b.ReportMetric(float64(st.Batches-before.Batches)/float64(b.N), "commits/request")
}
