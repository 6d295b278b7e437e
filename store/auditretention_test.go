package store

import (
	"testing"
	"time"
)

// TestPruneWhileAppending prunes over and over while 8 writers append
// through the journal and its group commits: the chain stays verifiable throughout.
func TestPruneWhileAppending(t *testing.T) {
	s, _, c := proposalStore(t)
	wait := appendConcurrently(t, s, 8, 60, nil)
	pruned := 0
	for range 20 {
		n, err := s.PruneAudit(c.now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		pruned += n
		if _, err := s.AuditVerify(); err != nil {
			t.Fatalf("verify during appends: %v", err)
		}
	}
	wait()
	if _, err := s.AuditVerify(); err != nil {
		t.Fatal(err)
	}
	if pruned == 0 {
		t.Fatal("nothing was pruned")
	}
	if st := s.AuditWriterStats(); st.Events < 480 {
		t.Fatalf("%d rows committed, want at least 480", st.Events)
	}
}
