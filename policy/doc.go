// Package policy owns the shape of an allowed destination (Service), the
// agent identities that may use a vault (Agent), and the decision whether a
// request may pass: host, port, path and method matching with a fixed
// precedence, returned as a Decision that carries its reason.
//
// It is pure: no I/O, no clock reads except where a caller passes a time, and
// it imports nothing of ours. The data path reads an immutable *Snapshot
// through an atomic pointer; the control plane builds a new one after every
// change, so the request path never touches the store.
//
// Matching precedence, most specific first:
//  1. an exact host beats a wildcard; a longer wildcard suffix beats a shorter;
//  2. a service with a port beats one for any port;
//  3. the longest path prefix wins (prefixes match on segment boundaries);
//  4. methods only filter: a service whose method list excludes the request's
//     method is skipped, and a less specific service may still match.
//
// When nothing matches, the reason names the first criterion no service met,
// in the order host, port, path, method, so an agent is told what to propose.
package policy
