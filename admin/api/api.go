package api

import (
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

// Prefix is the path every API route lives under.
const Prefix = "/api/v1"

// Error codes the API returns in ErrorBody. Stable: clients and scripts
// branch on them.
const (
	CodeBadRequest      = "bad_request"
	CodeInvalid         = "invalid"
	CodeUnauthorized    = "unauthorized"
	CodeForbidden       = "forbidden"
	CodeNotFound        = "not_found"
	CodeExists          = "exists"
	CodeSetupDone       = "setup_done"
	CodeSetupRequired   = "setup_required"
	CodeTooLarge        = "body_too_large"
	CodeUnsupportedType = "unsupported_media_type"
	CodeRateLimited     = "rate_limited"
	CodeBadHost         = "bad_host"
	CodeBadOrigin       = "bad_origin"
	CodeCAUnavailable   = "ca_unavailable"
	CodeUnavailable     = "unavailable"
	CodeInternal        = "internal"
	CodeMethod          = "method_not_allowed"
)

// ErrorBody is every error response: {"error": {"code", "message"}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Health answers GET /health. Status is "ok" or "unavailable" (with HTTP 503).
type Health struct {
	Status    string `json:"status"`
	SetupDone bool   `json:"setup_done"`
	Insecure  bool   `json:"insecure,omitempty"` // the store runs without a master password
	Version   string `json:"version,omitempty"`
	Message   string `json:"message,omitempty"` // why it is unavailable
	// Where the data path listens, for `agent-vault run`: the explicit
	// proxy's address ("" when disabled), the capture mode and, in local
	// mode, the agents' cgroup (absolute path).
	ProxyAddr    string `json:"proxy_addr,omitempty"`
	Redirect     string `json:"redirect,omitempty"`
	AgentsCgroup string `json:"agents_cgroup,omitempty"`
}

// LoginRequest is the body of POST /setup and POST /login.
type LoginRequest struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}

// SessionToken answers setup and login. The token is shown once; the server
// keeps only its SHA-256.
type SessionToken struct {
	Token     string    `json:"token"`
	Email     string    `json:"email"`
	Role      string    `json:"role"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Vault is one vault.
type Vault struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by,omitempty"`
}

// VaultCreate is the body of POST /vaults.
type VaultCreate struct {
	Name string `json:"name"`
}

// Credential describes a stored credential: names and times, never a value.
type Credential struct {
	Vault     string    `json:"vault"`
	Key       string    `json:"key"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	UpdatedBy string    `json:"updated_by,omitempty"`
	// Undecryptable: the stored value did not decrypt (altered or moved
	// in the store file); requests needing it are denied until it is set
	// again.
	Undecryptable bool `json:"undecryptable,omitempty"`
}

// CredentialValue is the body of PUT /vaults/{vault}/credentials/{key}. It is
// request-only: no response carries a value.
type CredentialValue struct {
	Value string `json:"value"`
}

// Service is policy.Service: the JSON mirrors the `service add` flags
// (name, host, port, path, methods, auth{kind, credential, header, prefix,
// username, placeholder, in, body_fields}).
type Service = policy.Service

// AgentCreate is the body of POST /vaults/{vault}/agents.
type AgentCreate struct {
	Name      string         `json:"name"`
	Sources   []netip.Prefix `json:"sources,omitempty"` // shape G: source CIDRs
	Cgroup    string         `json:"cgroup,omitempty"`  // shape L: path below the cgroup2 mount
	ExpiresAt time.Time      `json:"expires_at,omitzero"`
}

// AgentToken answers agent creation, once: the token is never shown again.
type AgentToken struct {
	Name  string `json:"name"`
	Vault string `json:"vault"`
	Token string `json:"token"`
}

// Agent is an agent as listed (no token, no token hash).
type Agent struct {
	Name      string         `json:"name"`
	Vault     string         `json:"vault"`
	Sources   []netip.Prefix `json:"sources,omitempty"`
	Cgroup    string         `json:"cgroup,omitempty"`
	Revoked   bool           `json:"revoked"`
	ExpiresAt time.Time      `json:"expires_at,omitzero"`
	CreatedAt time.Time      `json:"created_at"`
	CreatedBy string         `json:"created_by,omitempty"`
}

// AuditPage answers GET /audit: rows newest first, and the cursor of the next
// page (0 when this is the last).
type AuditPage struct {
	Events     []audit.Event `json:"events"`
	NextCursor uint64        `json:"next_cursor,omitempty"`
}

// AuditVerify answers GET /audit/verify. OK false comes with the first
// broken row.
type AuditVerify struct {
	OK        bool   `json:"ok"`
	Rows      uint64 `json:"rows"`
	BrokenSeq uint64 `json:"broken_seq,omitempty"`
	Reason    string `json:"reason,omitempty"`
}

// AuditFilter is the query of GET /audit. Empty fields do not filter. Since
// and Until take an RFC 3339 time or a Go duration meaning "that long ago"
// ("1h", "30m"). Limit defaults to 100 (at most 1000); Cursor comes from the
// previous page's NextCursor.
type AuditFilter struct {
	Vault    string
	Agent    string
	User     string
	Action   string
	Decision string // allow or deny
	Since    string
	Until    string
	Limit    int
	Cursor   uint64
}

// Values encodes the filter as URL query parameters.
func (f AuditFilter) Values() url.Values {
	v := url.Values{}
	set := func(k, s string) {
		if s != "" {
			v.Set(k, s)
		}
	}
	set("vault", f.Vault)
	set("agent", f.Agent)
	set("user", f.User)
	set("action", f.Action)
	set("decision", f.Decision)
	set("since", f.Since)
	set("until", f.Until)
	if f.Limit != 0 {
		v.Set("limit", strconv.Itoa(f.Limit))
	}
	if f.Cursor != 0 {
		v.Set("cursor", strconv.FormatUint(f.Cursor, 10))
	}
	return v
}

// User answers GET /session: who the session belongs to.
type User struct {
	Email string `json:"email"`
	Role  string `json:"role"`
}
