package api

import (
	"net/url"
	"time"

	"github.com/agentvault/agent-vault/policy"
)

// More error codes, for the proposal workflow and sessions.
const (
	CodeStale      = "stale"       // 409: the proposal changed since it was shown
	CodeNotPending = "not_pending" // 409: the proposal is already decided or expired
	CodeLimit      = "limit"       // 429: too many pending proposals
	CodeCSRF       = "csrf"        // 403: cookie session without a valid X-CSRF-Token
	CodeAgentToken = "agent_token" // 403: agent tokens may only propose and list their proposals
)

// CSRFHeader carries the CSRF token of a cookie session on state-changing
// requests; SessionCookie is the cookie's name.
const (
	CSRFHeader    = "X-CSRF-Token"
	SessionCookie = "av_session"
)

// ProposalCreate is the body of POST /proposals (and of POST
// /vaults/{vault}/proposals, and of POST /v1/proposals on
// agent-vault.internal): the service's fields exactly as `service add`
// takes them, plus why. Auth.Credential names the credential slot a human
// fills at approval. Vault may be left out: it is the agent's vault.
type ProposalCreate struct {
	policy.Service
	Reason string `json:"reason"`
}

// Proposal is a proposal as shown. Hash is the content hash an approval
// must send back.
type Proposal struct {
	ID         uint64         `json:"id"`
	Vault      string         `json:"vault"`
	Agent      string         `json:"agent"`
	Service    policy.Service `json:"service"`
	Reason     string         `json:"reason"`
	State      string         `json:"state"` // pending, approved, rejected, expired
	Revision   int            `json:"revision"`
	Hash       string         `json:"hash"`
	CreatedAt  time.Time      `json:"created_at"`
	UpdatedAt  time.Time      `json:"updated_at"`
	ExpiresAt  time.Time      `json:"expires_at"`
	DecidedAt  time.Time      `json:"decided_at,omitzero"`
	DecidedBy  string         `json:"decided_by,omitempty"`
	Note       string         `json:"note,omitempty"`
	Credential string         `json:"credential,omitempty"` // the key the approval filled
}

// ProposalApprove is the body of POST /proposals/{id}/approve. Hash is the
// content hash of the proposal as shown (required). Value, request-only,
// is the credential's value; leave it out to use an existing credential.
// Credential fills this key instead of the requested slot.
type ProposalApprove struct {
	Hash       string `json:"hash"`
	Credential string `json:"credential,omitempty"`
	Value      string `json:"value,omitempty"`
}

// ProposalReject is the body of POST /proposals/{id}/reject; Hash is
// optional (checked when given).
type ProposalReject struct {
	Hash   string `json:"hash,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// ProposalFilter is the query of GET /proposals.
type ProposalFilter struct {
	Vault string
	Agent string
	State string
}

// Values encodes the filter as URL query parameters.
func (f ProposalFilter) Values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"vault": f.Vault, "agent": f.Agent, "state": f.State} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

// Account is a user as listed (no password hash, no invite token).
type Account struct {
	Email           string            `json:"email"`
	Role            string            `json:"role,omitempty"` // instance-wide role
	VaultRoles      map[string]string `json:"vault_roles,omitempty"`
	Invited         bool              `json:"invited,omitempty"`
	InviteExpiresAt time.Time         `json:"invite_expires_at,omitzero"`
	InvitedBy       string            `json:"invited_by,omitempty"`
	CreatedAt       time.Time         `json:"created_at"`
}

// UserInvite is the body of POST /users. Without Vault the role is
// instance-wide (owner, admin, approver, viewer); with it, the role (admin,
// approver, viewer) applies to that vault.
type UserInvite struct {
	Email string `json:"email"`
	Role  string `json:"role"`
	Vault string `json:"vault,omitempty"`
}

// Invitation answers POST /users: the one-time invite token, shown once.
type Invitation struct {
	Account     Account   `json:"account"`
	InviteToken string    `json:"invite_token"`
	ExpiresAt   time.Time `json:"expires_at"`
}

// InviteAccept is the body of POST /invites/accept (no session needed).
type InviteAccept struct {
	Token    string `json:"token"`
	Password string `json:"password"`
}

// RoleGrant is the body of PUT /users/{email}/role. Role "" (or "none")
// removes the role; without Vault it is the instance-wide role.
type RoleGrant struct {
	Role  string `json:"role"`
	Vault string `json:"vault,omitempty"`
}

// Whoami answers GET /session for a human or an agent token.
type Whoami struct {
	Kind       string            `json:"kind"` // user or agent
	Email      string            `json:"email,omitempty"`
	Role       string            `json:"role,omitempty"`
	VaultRoles map[string]string `json:"vault_roles,omitempty"`
	Agent      string            `json:"agent,omitempty"`
	Vault      string            `json:"vault,omitempty"`
	ExpiresAt  time.Time         `json:"expires_at,omitzero"`
}

// CookieLogin answers POST /login?cookie=1: the session is in the cookie;
// state-changing requests send CSRFToken in the X-CSRF-Token header.
type CookieLogin struct {
	Email     string    `json:"email"`
	Role      string    `json:"role"`
	CSRFToken string    `json:"csrf_token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// ServiceSummary is what GET /v1/services on agent-vault.internal shows an
// agent: names and hosts, never values.
type ServiceSummary struct {
	Name    string   `json:"name"`
	Host    string   `json:"host"`
	Port    int      `json:"port,omitempty"`
	Path    string   `json:"path,omitempty"`
	Methods []string `json:"methods,omitempty"`
	Auth    string   `json:"auth"`
}

// AgentError is the error body agents get on agent-vault.internal.
type AgentError struct {
	Error AgentErrorDetail `json:"error"`
}

// AgentErrorDetail is the inside of AgentError.
type AgentErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
}
