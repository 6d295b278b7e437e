package mitm

import (
	"encoding/json"
	"net/http"
)

// Error codes agents see in {"error": {"code": ...}} and X-Agent-Vault-Error.
const (
	CodeNoService          = "no_service"          // 403
	CodeMisdirected        = "misdirected"         // 421
	CodeAgentUnknown       = "agent_unknown"       // 403
	CodeAgentRevoked       = "agent_revoked"       // 403
	CodeAuditUnavailable   = "audit_unavailable"   // 503
	CodeUpstreamError      = "upstream_error"      // 502
	CodeProxyAuthRequired  = "proxy_auth_required" // 407
	CodeBadRequest         = "bad_request"         // 400
	CodeCredentialMissing  = "credential_missing"  // 403: the service's credential has no value yet
	CodeHTTPSRequired      = "https_required"      // 403: a service with credentials over plain HTTP
	CodeDestinationDenied  = "destination_denied"  // 403: the connection's address does not belong to the name
	CodeNotFound           = "not_found"           // 404 on agent-vault.internal
	CodeInjectionFailed    = "injection_failed"    // 502: the credential could not be attached
	CodeUnscrubbableEncode = "unscrubbable_body"   // 502: an encoded body, or an upgrade, that cannot be scrubbed
)

// ErrorHeader carries the error code on every answer the broker itself gives.
const ErrorHeader = "X-Agent-Vault-Error"

type agentError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
}

// writeAgentError answers the agent. Messages and hints never contain a
// secret: they are built from names, hosts and reasons only.
func writeAgentError(w http.ResponseWriter, status int, code, msg, hint string) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(ErrorHeader, code)
	h.Del("Content-Length")
	w.WriteHeader(status)
	body, _ := json.Marshal(struct {
		Error agentError `json:"error"`
	}{agentError{Code: code, Message: msg, Hint: hint}})
	w.Write(append(body, '\n'))
}

// proposalHint tells an agent how to ask a human for access to host.
func proposalHint(host string) string {
	return "Ask a human to grant access: POST https://agent-vault.internal/v1/proposals with the host " + host +
		", or run `agent-vault proposal create --vault VAULT --name NAME --host " + host +
		" --auth KIND --credential KEY --reason TEXT`."
}
