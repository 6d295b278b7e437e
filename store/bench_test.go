package store

import (
	"context"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/agentvault/agent-vault/audit"
)

// The audit benchmarks run against a real file with fsync on (bbolt's
// default), as the data path does. They print events/s and the mean batch
// size; absolute numbers depend on the disk.

func benchStore(b *testing.B) *Store {
	b.Helper()
	return openTest(b, filepath.Join(b.TempDir(), "bench.db"), testOptions())
}

func benchEvent() audit.Event {
	return audit.Event{
		Actor: audit.Actor{Kind: audit.ActorAgent, Name: "bench-agent"}, Vault: "prod", Action: "request",
		Decision: audit.DecisionAllow, Reason: "matched", Service: "api", Credential: "token",
		Method: "GET", Host: "api.example.com", Path: "/v1/things",
	}
}

func reportAudit(b *testing.B, s *Store, before WriterStats) {
	st := s.AuditWriterStats()
	events, batches := st.Events-before.Events, st.Batches-before.Batches
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
	if batches > 0 {
		b.ReportMetric(float64(events)/float64(batches), "events/batch")
	}
}

func BenchmarkAuditAppendSingleWriter(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	before := s.AuditWriterStats()
	b.ResetTimer()
	for b.Loop() {
		ev := benchEvent()
		if err := s.Append(ctx, &ev); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportAudit(b, s, before)
}

func BenchmarkAuditAppend64Writers(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	before := s.AuditWriterStats()
	// RunParallel starts parallelism*GOMAXPROCS goroutines: make it 64
	procs := testingGOMAXPROCS()
	b.SetParallelism((64 + procs - 1) / procs)
	var failed atomic.Bool
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ev := benchEvent()
			if err := s.Append(ctx, &ev); err != nil {
				failed.Store(true)
				return
			}
		}
	})
	b.StopTimer()
	if failed.Load() {
		b.Fatal("append failed")
	}
	reportAudit(b, s, before)
}

func testingGOMAXPROCS() int { return runtime.GOMAXPROCS(0) }
