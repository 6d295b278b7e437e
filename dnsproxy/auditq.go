package dnsproxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

// ActionDNSQuery is the audit action of every DNS event.
const ActionDNSQuery = "dns.query"

const (
	auditQueueLen  = 4096
	auditWorkers   = 4 // concurrent Appends, so the store can group-commit them
	auditTimeout   = 5 * time.Second
	maxAuditedName = 255
)

// auditQueue commits events in the background. Several workers call Append
// at once so a group-committing sink batches them.
type auditQueue struct {
	sink    audit.Sink
	log     *slog.Logger
	mu      sync.RWMutex
	closed  bool
	ch      chan *audit.Event
	start   sync.Once
	wg      sync.WaitGroup
	dropped atomic.Uint64
	failed  atomic.Uint64
}

func newAuditQueue(sink audit.Sink, log *slog.Logger) *auditQueue {
	return &auditQueue{sink: sink, log: log, ch: make(chan *audit.Event, auditQueueLen)}
}

func (q *auditQueue) run() {
	q.start.Do(func() {
		for range auditWorkers {
			q.wg.Add(1)
			go func() {
				defer q.wg.Done()
				for ev := range q.ch {
					q.commit(ev)
				}
			}()
		}
	})
}

func (q *auditQueue) commit(ev *audit.Event) {
	ctx, cancel := context.WithTimeout(context.Background(), auditTimeout)
	defer cancel()
	if err := q.sink.Append(ctx, ev); err != nil {
		q.failed.Add(1)
		q.log.Error("dns audit event not recorded", "err", err, "host", ev.Host, "reason", ev.Reason)
	}
}

// enqueue hands an event to the background writers without waiting; a full
// or closed queue drops it and counts the drop.
func (q *auditQueue) enqueue(ev *audit.Event) {
	if q.sink == nil {
		return
	}
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		q.dropped.Add(1)
		return
	}
	select {
	case q.ch <- ev:
	default:
		if n := q.dropped.Add(1); n&(n-1) == 0 { // log on powers of two
			q.log.Warn("dns audit queue full, event dropped", "dropped", n)
		}
	}
}

// appendNow commits an event and waits for it.
func (q *auditQueue) appendNow(ctx context.Context, ev *audit.Event) error {
	if q.sink == nil {
		return nil
	}
	if err := q.sink.Append(ctx, ev); err != nil {
		q.failed.Add(1)
		return fmt.Errorf("record dns audit event: %w", err)
	}
	return nil
}

// close stops accepting events and waits until the queued ones are
// committed, or ctx ends.
func (q *auditQueue) close(ctx context.Context) error {
	q.mu.Lock()
	if !q.closed {
		q.closed = true
		close(q.ch)
	}
	q.mu.Unlock()
	q.run() // a queue that never ran drains here
	done := make(chan struct{})
	go func() { q.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("flush dns audit events: %w", ctx.Err())
	}
}

// newEvent builds the audit event of one query. agent is nil for an unknown
// source.
func newEvent(now time.Time, agent *policy.Agent, src netip.AddrPort, name string, qtype uint16, allowed bool, reason Reason) *audit.Event {
	ev := &audit.Event{
		Time:     now,
		Actor:    audit.Actor{Kind: audit.ActorAgent},
		Action:   ActionDNSQuery,
		Host:     truncate(name, maxAuditedName),
		Method:   typeString(qtype),
		Decision: audit.DecisionDeny,
		Reason:   string(reason),
	}
	if src.IsValid() {
		ev.Target = src.Addr().Unmap().String()
	}
	if allowed {
		ev.Decision = audit.DecisionAllow
	}
	if agent != nil {
		ev.Actor.Name = agent.Name
		ev.Vault = agent.Vault
	}
	return ev
}

func typeString(t uint16) string {
	if s, ok := dns.TypeToString[t]; ok {
		return s
	}
	return fmt.Sprintf("TYPE%d", t)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
