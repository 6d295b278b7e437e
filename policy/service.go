package policy

import (
	"net/netip"
	"time"
)

// AuthKind says how the broker authenticates a request to a service.
type AuthKind string

// The auth kinds a service may declare.
const (
	AuthBearer      AuthKind = "bearer"      // Authorization: Bearer <credential>
	AuthHeader      AuthKind = "header"      // <Header>: <Prefix><credential>
	AuthBasic       AuthKind = "basic"       // Authorization: Basic base64(Username:<credential>)
	AuthPlaceholder AuthKind = "placeholder" // the agent's Placeholder string is swapped for the credential in the In places
	AuthNone        AuthKind = "none"        // allowed, nothing injected
)

// Location is a place in a request where a placeholder may be swapped.
type Location string

// The places a placeholder may be swapped in.
const (
	InPath   Location = "path"
	InQuery  Location = "query"
	InHeader Location = "header" // the header named by Auth.Header
	InBody   Location = "body"   // JSON string values or form values (Auth.BodyFields narrows to named fields)
)

// Auth is how a service authenticates. Credential names the credential key in
// the same vault; it never holds a value.
type Auth struct {
	Kind        AuthKind   `json:"kind"`
	Credential  string     `json:"credential,omitempty"`
	Header      string     `json:"header,omitempty"`
	Prefix      string     `json:"prefix,omitempty"`
	Username    string     `json:"username,omitempty"`
	Placeholder string     `json:"placeholder,omitempty"`
	In          []Location `json:"in,omitempty"`
	BodyFields  []string   `json:"body_fields,omitempty"`
}

// Service is one allowed destination of a vault and how to authenticate to it.
// Host is an exact name ("api.example.com") or a wildcard ("*.example.com",
// matching any name strictly below example.com). Port 0 means any port. Path
// is a prefix matched on segment boundaries ("" and "/" match everything).
// Methods empty means any method.
type Service struct {
	Vault   string   `json:"vault"`
	Name    string   `json:"name"`
	Host    string   `json:"host"`
	Port    int      `json:"port,omitempty"`
	Path    string   `json:"path,omitempty"`
	Methods []string `json:"methods,omitempty"`
	Auth    Auth     `json:"auth"`
}

// Agent is an identity that may use one vault. An agent is recognised by its
// token (shape E, stored only as a SHA-256 hash), by its source address
// (shape G) or by its cgroup (shape L).
type Agent struct {
	Name      string         `json:"name"`
	Vault     string         `json:"vault"`
	TokenHash [32]byte       `json:"-"`
	Sources   []netip.Prefix `json:"sources,omitempty"`
	Cgroup    string         `json:"cgroup,omitempty"`    // path below the cgroup2 mount
	CgroupID  uint64         `json:"cgroup_id,omitempty"` // inode of Cgroup, resolved when the snapshot is built
	Revoked   bool           `json:"revoked,omitempty"`
	ExpiresAt time.Time      `json:"expires_at,omitzero"` // zero: never
}

// Active reports whether the agent may act at time now.
func (a *Agent) Active(now time.Time) bool {
	return !a.Revoked && (a.ExpiresAt.IsZero() || now.Before(a.ExpiresAt))
}
