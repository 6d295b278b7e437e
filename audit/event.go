package audit

import (
	"context"
	"time"
)

// ActorKind says who caused an event.
type ActorKind string

// The kinds of actors.
const (
	ActorAgent  ActorKind = "agent"
	ActorUser   ActorKind = "user"
	ActorSystem ActorKind = "system"
)

// Actor is who caused an event: an agent name, a user's email, or "system".
type Actor struct {
	Kind ActorKind `json:"kind"`
	Name string    `json:"name"`
}

// System is the actor for events the appliance causes itself.
var System = Actor{Kind: ActorSystem, Name: "system"}

// Decisions recorded on events.
const (
	DecisionAllow = "allow"
	DecisionDeny  = "deny"
)

// Event is one audit row. Seq, PrevHash and Hash are set by the Sink when the
// event is committed. Time is set by the caller (the Sink fills it if zero).
type Event struct {
	Seq        uint64        `json:"seq"`
	Time       time.Time     `json:"time"`
	Actor      Actor         `json:"actor"`
	Vault      string        `json:"vault,omitempty"`
	Action     string        `json:"action"`             // e.g. "request", "request.complete", "dns.query", "vault.create"
	Target     string        `json:"target,omitempty"`   // what the action was on: a vault, service, agent or credential name, a proposal id
	Decision   string        `json:"decision,omitempty"` // allow or deny, for decisions
	Reason     string        `json:"reason,omitempty"`
	Service    string        `json:"service,omitempty"`
	Credential string        `json:"credential,omitempty"` // the credential's name, never its value
	Method     string        `json:"method,omitempty"`
	Host       string        `json:"host,omitempty"`
	Path       string        `json:"path,omitempty"`
	Status     int           `json:"status,omitempty"`
	Bytes      int64         `json:"bytes,omitempty"`
	Duration   time.Duration `json:"duration_ns,omitempty"`
	Ref        uint64        `json:"ref,omitempty"` // the row this one completes (a request's intent row)
	PrevHash   string        `json:"prev_hash"`
	Hash       string        `json:"hash"`
}

// Sink records events. Append returns only once the event is recorded as
// durably as the Sink promises (the store: written to its journal, so a
// crash of the process loses nothing, and fsynced with the next group
// commit; or, with --audit-sync always, fsynced before Append returns); it
// fills in Seq, Time (if zero), PrevHash and Hash. An error means the event
// may not be recorded, and a caller on the data path must then fail closed.
type Sink interface {
	Append(ctx context.Context, ev *Event) error
}

// FollowUpSink is a Sink that can also record a follow-up row — the
// completion of something whose first row is already recorded — without
// waiting: the row is numbered and chained at once and reaches storage with
// the rows after it. Losing it in a crash loses the completion, never the
// record that the thing happened.
type FollowUpSink interface {
	Sink
	AppendFollowUp(ev *Event) error
}
