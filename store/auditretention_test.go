package store

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/audit"
)

// TestPruneWhileAppending prunes over and over while 8 writers append
// through the journal and its group commits: the chain stays verifiable throughout.
func TestPruneWhileAppending(t *testing.T) {
	s, _, c := proposalStore(t)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 60 {
				ev := &audit.Event{Actor: agentActor("bot"), Action: "request", Status: 200 + w, Bytes: int64(i)}
				if err := s.Append(context.Background(), ev); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
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
	wg.Wait()
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
