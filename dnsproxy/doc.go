// Package dnsproxy owns the appliance's DNS listener: it answers every query
// an agent sends (captured from udp+tcp/53 by redirect, or sent to the proxy
// directly), resolves only the names the agent's vault allows through the
// upstream resolver, and pins the addresses it returned for (agent, name) so
// the broker can later check that a connection's original destination belongs
// to its SNI. It may import policy and audit only (never mitm, store,
// redirect or admin); cmd passes everything else in through Config.
//
// The decision for one question is the pure function Decide: a known, active
// agent asking A (or AAAA when IPv6 is on) for a host of its vault is
// forwarded; agent-vault.internal is answered with the broker's address;
// every other name gets NXDOMAIN with a synthesized SOA and never reaches the
// upstream (no tunnelling through the appliance); HTTPS/SVCB, AAAA without
// IPv6 and other record types of allowed names get NOERROR with no data.
// Upstream failures give SERVFAIL. Answers for allowed names that the broker
// would not dial are dropped (policy.UpstreamAddrAllowed: private and
// loopback ones unless Config.AllowPrivate, against rebinding); when
// every address of an answer was dropped the reply is SERVFAIL, audited as a
// "rebinding_blocked" denial.
//
// Identity: a query's agent comes from Config.Identify (by source address:
// gateway mode, or local mode's per-source UDP record), or for a TCP
// connection from Config.IdentifyConn, asked once when it is accepted (local
// mode's record of a captured connection is keyed by its 4-tuple and
// consumed by one lookup).
//
// Auditing: every query is one audit event (Action "dns.query", Host the
// normalized name, Method the query type such as "A", Decision allow or deny,
// Reason the decision's reason, Target the client's source address). An event
// for a forwarded query is committed concurrently with the upstream exchange
// and the reply waits for both: an address never reaches an agent, and no pin
// is written, unless its query is durably audited (a failed commit turns the
// answer into SERVFAIL). Every other event (denials, no-data answers, refusals)
// is queued and committed in the background so it never delays the answer; a
// full queue drops the event and counts it in Stats.AuditDropped. Refusals of
// unknown sources, inactive agents and rate-limited agents are audited once
// per window per source or agent, not once per query, so a flood cannot flood
// the audit log.
package dnsproxy
