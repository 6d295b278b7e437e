package mitm

import (
	"context"
	"net/netip"
	"time"

	"github.com/agentvault/agent-vault/audit"
)

// Audit actions written by the data path.
const (
	ActionRequest         = "request"          // an allowed request's intent, or a denied request
	ActionRequestComplete = "request.complete" // status, bytes and duration of an allowed request; Ref = the intent's Seq
	ActionConnection      = "connection"       // a connection refused before any request (handshake, identity)
)

func agentActor(name string) audit.Actor {
	if name == "" {
		name = "unknown"
	}
	return audit.Actor{Kind: audit.ActorAgent, Name: name}
}

// appendAudit writes one event with the configured timeout.
func (b *Broker) appendAudit(ctx context.Context, ev *audit.Event) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.AuditTimeout)
	defer cancel()
	if ev.Time.IsZero() {
		ev.Time = b.now()
	}
	return b.cfg.Audit.Append(ctx, ev)
}

// auditConn records a refused connection. A failure to record is logged: the
// connection is refused either way.
func (b *Broker) auditConn(ctx context.Context, agent string, peer netip.AddrPort, host, reason string) {
	ev := &audit.Event{
		Actor:    agentActor(agent),
		Vault:    b.vaultOf(agent),
		Action:   ActionConnection,
		Target:   peer.Addr().String(),
		Decision: audit.DecisionDeny,
		Reason:   reason,
		Host:     host,
	}
	if err := b.appendAudit(ctx, ev); err != nil {
		b.log.Error("audit append failed for a denied connection", "agent", agent, "reason", reason, "err", err)
	}
}

// auditDeny records a denied request.
func (b *Broker) auditDeny(ctx context.Context, rl *reqLog) {
	ev := &audit.Event{
		Actor:    agentActor(rl.agent),
		Vault:    rl.vault,
		Action:   ActionRequest,
		Decision: audit.DecisionDeny,
		Reason:   rl.reason,
		Service:  rl.service,
		Method:   rl.method,
		Host:     rl.host,
		Path:     rl.path,
		Status:   rl.status,
	}
	if err := b.appendAudit(ctx, ev); err != nil {
		b.log.Error("audit append failed for a denied request", "agent", rl.agent, "reason", rl.reason, "err", err)
	}
}

func (b *Broker) vaultOf(agent string) string {
	if agent == "" {
		return ""
	}
	if a, ok := b.snap.Load().Agent(agent); ok {
		return a.Vault
	}
	return ""
}

// auditComplete appends the completion row without holding up the response.
// A Sink that takes follow-up rows (audit.FollowUpSink, the store) records
// it inline without waiting; otherwise it is appended in a goroutine the
// broker tracks (Shutdown waits for it), retried three times, or inline
// when the broker is already shutting down.
func (b *Broker) auditComplete(ev audit.Event) {
	write := func() {
		var err error
		for attempt := 0; attempt < 3; attempt++ {
			if attempt > 0 {
				time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
			}
			e := ev
			if err = b.appendAudit(context.Background(), &e); err == nil {
				return
			}
		}
		b.log.Error("audit append failed for a request completion", "agent", ev.Actor.Name, "ref", ev.Ref, "err", err)
	}
	if fs, ok := b.cfg.Audit.(audit.FollowUpSink); ok {
		if ev.Time.IsZero() {
			ev.Time = b.now()
		}
		if err := fs.AppendFollowUp(&ev); err == nil {
			return
		}
	}
	if !b.enter() {
		write()
		return
	}
	go func() {
		defer b.wg.Done()
		write()
	}()
}
