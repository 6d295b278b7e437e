// Package admin owns the control plane's HTTP API under /api/v1 and the web
// UI on the same listener (ui.go, ui_pages.go; templates, CSS and JS embedded
// from ui/, server-rendered, working without JavaScript): human authentication (Argon2id password
// hashes, session tokens kept only as SHA-256, absolute and idle session
// expiry, cookie sessions with a CSRF token derived from the session, a
// login rate limiter), roles (instance owner; admin, approver and viewer
// instance-wide or per vault; one check, principal.allowed), invites, the
// proposal workflow (agents propose with their token, which reaches nothing
// else; humans approve with the content hash they reviewed), the audit log's
// listing, live stream (server-sent events) and export, the one route
// table, and the one function that maps errors to {"error": {"code",
// "message"}} responses. NewAgentAPI serves the agent-facing part of
// agent-vault.internal (/v1/services, /v1/proposals) for the data path. Its
// defences: request bodies capped at 1 MiB with unknown JSON fields refused,
// a Host check against DNS rebinding, an Origin check on state-changing
// requests, and constant-time comparisons of tokens and hashes.
//
// It may import store, policy and audit (and its own sub-packages api and
// client); never mitm, redirect, dnsproxy or bpf. It reaches the store only
// through the small Store and AgentStore interfaces declared here, which
// *store.Store satisfies. Credentials are write-only: no response ever
// carries a value.
package admin
