package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/store"
)

// auditThroughput appends request-sized events from writers goroutines to a
// real store file for d and returns events per second. With
// store.AuditSyncAlways every Append waits for the fsynced group commit
// holding its row (the audit_events_per_s case); with AuditSyncBatch it
// returns once the row is journaled, and the commits follow.
func auditThroughput(path string, mode store.AuditSync, writers int, d time.Duration) (float64, error) {
	s, err := store.Open(path, store.Options{Insecure: true, AuditSync: mode, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return 0, err
	}
	defer s.Close()
	var n atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for time.Now().Before(deadline) {
				ev := &audit.Event{Actor: audit.Actor{Kind: audit.ActorAgent, Name: fmt.Sprintf("agent-%d", w)},
					Vault: "bench", Action: "request", Decision: audit.DecisionAllow, Service: "api",
					Credential: "API_KEY", Method: "POST", Host: "api.bench.test", Path: "/v1/chat/completions"}
				if err := s.Append(context.Background(), ev); err != nil {
					firstErr.Store(err)
					return
				}
				n.Add(1)
			}
		}(w)
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return float64(n.Load()) / time.Since(start).Seconds(), nil
}
