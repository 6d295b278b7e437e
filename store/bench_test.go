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
// default), as the data path does, in both sync modes: "always" (each
// Append waits for the fsynced group commit holding its row) and "batch"
// (Append returns once the row is journaled; the time includes committing
// every row before the timer stops). They print events/s and the mean
// batch size; absolute numbers depend on the disk.

func benchStore(b *testing.B, mode AuditSync) *Store {
	b.Helper()
	opt := testOptions()
	opt.AuditSync = mode
	return openTest(b, filepath.Join(b.TempDir(), "bench.db"), opt)
}

func benchModes(b *testing.B, fn func(b *testing.B, s *Store)) {
	for _, mode := range []AuditSync{AuditSyncAlways, AuditSyncBatch} {
		b.Run(mode.String(), func(b *testing.B) {
			s := benchStore(b, mode)
			before := s.AuditWriterStats()
			b.ResetTimer()
			fn(b, s)
			// every row committed, in both modes, and timed: b.Loop stops
			// the timer when it ends (RunParallel does not)
			b.StartTimer()
			s.syncAudit(true)
			b.StopTimer()
			reportAudit(b, s, before)
		})
	}
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
	benchModes(b, func(b *testing.B, s *Store) {
		ctx := context.Background()
		for b.Loop() {
			ev := benchEvent()
			if err := s.Append(ctx, &ev); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkAuditAppend64Writers(b *testing.B) {
	benchModes(b, func(b *testing.B, s *Store) {
		ctx := context.Background()
		// RunParallel starts parallelism*GOMAXPROCS goroutines: make it 64
		procs := testingGOMAXPROCS()
		b.SetParallelism((64 + procs - 1) / procs)
		var failed atomic.Bool
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				ev := benchEvent()
				if err := s.Append(ctx, &ev); err != nil {
					failed.Store(true)
					return
				}
			}
		})
		if failed.Load() {
			b.Fatal("append failed")
		}
	})
}

func testingGOMAXPROCS() int { return runtime.GOMAXPROCS(0) }
