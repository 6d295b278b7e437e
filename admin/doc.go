// Package admin owns the control plane's HTTP API under /api/v1 (and later
// the web UI on the same listener): human authentication (Argon2id password
// hashes, session tokens kept only as SHA-256, a login rate limiter), the
// one route table, the one authorization point, and the one function that
// maps errors to {"error": {"code", "message"}} responses. Its defences:
// request bodies capped at 1 MiB with unknown JSON fields refused, a Host
// check against DNS rebinding and an Origin check on state-changing requests.
//
// It may import store, policy and audit (and its own sub-packages api and
// client); never mitm, redirect, dnsproxy or bpf. It reaches the store only
// through the small Store interface declared here, which *store.Store
// satisfies. Credentials are write-only: no response ever carries a value.
package admin
