package policy

// Action is the outcome of a decision.
type Action string

// The two actions.
const (
	Allow Action = "allow"
	Deny  Action = "deny"
)

// Reason says why a decision came out the way it did. Reasons are stable
// strings: tests, audit rows and agent-facing messages rely on them.
type Reason string

// The reasons a Match can return.
const (
	ReasonMatched      Reason = "matched"
	ReasonUnknownVault Reason = "unknown_vault"
	ReasonNoHost       Reason = "no_service_for_host"
	ReasonPort         Reason = "port_not_allowed"
	ReasonPath         Reason = "path_not_allowed"
	ReasonMethod       Reason = "method_not_allowed"
)

// Decision is the answer to one request. Service is set only when Action is
// Allow; it points into the snapshot and must not be modified.
type Decision struct {
	Action  Action
	Reason  Reason
	Service *Service
}

// Allowed reports whether the decision lets the request through.
func (d Decision) Allowed() bool { return d.Action == Allow }

// Request is what a decision is made on: the normalized host (the TLS SNI),
// the destination port, the method and the URL path.
type Request struct {
	Host   string
	Port   int
	Method string
	Path   string
}
