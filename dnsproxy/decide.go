package dnsproxy

import (
	"github.com/miekg/dns"

	"github.com/agentvault/agent-vault/policy"
)

// Action is what the proxy does with one question.
type Action uint8

// The actions Decide returns. The zero value is Deny, so a forgotten case
// fails closed.
const (
	Deny     Action = iota // NXDOMAIN with a synthesized SOA; never forwarded
	Forward                // resolve upstream, pin the addresses, answer
	Reserved               // answer with the broker's own address
	NoData                 // NOERROR with no records (and a SOA for negative caching)
	Refuse                 // REFUSED: no policy, unknown or inactive agent, unsupported class
)

func (a Action) String() string {
	switch a {
	case Deny:
		return "deny"
	case Forward:
		return "forward"
	case Reserved:
		return "reserved"
	case NoData:
		return "nodata"
	case Refuse:
		return "refuse"
	}
	return "unknown"
}

// Reason says why. Reasons are stable strings: tests and audit rows rely on
// them.
type Reason string

// Reasons returned by Decide.
const (
	ReasonAllowed       Reason = "allowed"                   // Forward
	ReasonReserved      Reason = "reserved"                  // Reserved
	ReasonNoService     Reason = Reason(policy.ReasonNoHost) // Deny: no service of the vault matches the name
	ReasonUnknownVault  Reason = Reason(policy.ReasonUnknownVault)
	ReasonInvalidName   Reason = "invalid_name"        // Deny: not a plain host name
	ReasonIPv6Disabled  Reason = "ipv6_disabled"       // NoData: AAAA while IPv6 is off
	ReasonHTTPSBlocked  Reason = "https_svcb_blocked"  // NoData: HTTPS/SVCB (no ech, no h3 hints)
	ReasonTypeNotServed Reason = "type_not_served"     // NoData: other record types of an allowed name
	ReasonNoPolicy      Reason = "no_policy"           // Refuse: no snapshot loaded yet
	ReasonUnknownAgent  Reason = "unknown_agent"       // Refuse
	ReasonAgentInactive Reason = "agent_inactive"      // Refuse: revoked or expired
	ReasonClass         Reason = "class_not_supported" // Refuse: class other than IN
)

// Reasons the proxy adds after Decide (they appear in audit rows too).
const (
	ReasonRateLimited      Reason = "rate_limited"      // REFUSED
	ReasonBadVersion       Reason = "edns_bad_version"  // BADVERS
	ReasonUpstreamFailed   Reason = "upstream_failed"   // SERVFAIL
	ReasonRebindingBlocked Reason = "rebinding_blocked" // private answers dropped
	ReasonAuditUnavailable Reason = "audit_unavailable" // SERVFAIL: the allow event could not be committed
	ReasonNoBrokerAddress  Reason = "no_broker_address" // NoData for agent-vault.internal in that family
)

// Decision is the outcome for one question. Name is the normalized question
// name (lower case, no trailing dot); it is what pins are keyed by.
type Decision struct {
	Action Action
	Reason Reason
	Name   string
}

// Decide decides one question for an agent. It is pure: no I/O, no clock
// (an agent's expiry is checked by the caller), no allocation for names
// already in lower case. A nil snapshot or agent is refused.
//
// Only a known, non-revoked agent asking class IN for A (or AAAA when ipv6)
// of a host its vault allows is ever forwarded.
func Decide(snap *policy.Snapshot, agent *policy.Agent, q dns.Question, ipv6 bool) Decision {
	if snap == nil {
		return Decision{Action: Refuse, Reason: ReasonNoPolicy}
	}
	if agent == nil {
		return Decision{Action: Refuse, Reason: ReasonUnknownAgent}
	}
	if agent.Revoked {
		return Decision{Action: Refuse, Reason: ReasonAgentInactive}
	}
	if q.Qclass != dns.ClassINET {
		return Decision{Action: Refuse, Reason: ReasonClass}
	}
	name := policy.NormalizeHost(q.Name)
	if !plainHostName(name) {
		return Decision{Action: Deny, Reason: ReasonInvalidName, Name: name}
	}
	if name == policy.ReservedHost {
		switch {
		case q.Qtype == dns.TypeA:
			return Decision{Action: Reserved, Reason: ReasonReserved, Name: name}
		case q.Qtype == dns.TypeAAAA && ipv6:
			return Decision{Action: Reserved, Reason: ReasonReserved, Name: name}
		}
		return typeNoData(q.Qtype, name)
	}
	if !snap.HasVault(agent.Vault) {
		return Decision{Action: Deny, Reason: ReasonUnknownVault, Name: name}
	}
	if !snap.HostAllowed(agent.Vault, name) {
		return Decision{Action: Deny, Reason: ReasonNoService, Name: name}
	}
	switch {
	case q.Qtype == dns.TypeA:
		return Decision{Action: Forward, Reason: ReasonAllowed, Name: name}
	case q.Qtype == dns.TypeAAAA && ipv6:
		return Decision{Action: Forward, Reason: ReasonAllowed, Name: name}
	}
	return typeNoData(q.Qtype, name)
}

// typeNoData is the answer for a record type the proxy does not serve for a
// name it otherwise answers.
func typeNoData(qtype uint16, name string) Decision {
	switch qtype {
	case dns.TypeAAAA:
		return Decision{Action: NoData, Reason: ReasonIPv6Disabled, Name: name}
	case dns.TypeHTTPS, dns.TypeSVCB:
		return Decision{Action: NoData, Reason: ReasonHTTPSBlocked, Name: name}
	}
	return Decision{Action: NoData, Reason: ReasonTypeNotServed, Name: name}
}

// plainHostName reports whether a normalized name is an ordinary host name:
// 1 to 253 bytes of labels (1 to 63 bytes each) made of lower-case letters,
// digits and '-'. Escaped bytes, underscores, spaces and the root name are
// refused: no service host can have them, and nothing else may leave.
func plainHostName(name string) bool {
	if len(name) == 0 || len(name) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-':
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return label > 0
}
