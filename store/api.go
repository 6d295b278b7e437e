package store

// This file declares the store's public API. The bodies are filled in by the
// store implementation; signatures here are what admin and cmd code against.

import (
	"errors"
	"log/slog"
	"time"

	"github.com/agentvault/agent-vault/policy"
)

// Errors callers map to API statuses and exit codes. Wrapped errors add
// context; test with errors.Is.
var (
	ErrWrongPassword    = errors.New("wrong master password")
	ErrPasswordRequired = errors.New("the store is encrypted: a master password is required")
	ErrLocked           = errors.New("the store file is locked by another process")
	ErrNewerSchema      = errors.New("the store was written by a newer version of agent-vault")
	ErrNotFound         = errors.New("not found")
	ErrExists           = errors.New("already exists")
	ErrSetupDone        = errors.New("setup is already done: an owner exists")
	ErrInvalid          = errors.New("invalid")
)

// KDFParams are the Argon2id parameters of the key-encryption key. They are
// stored in the file, so a store keeps opening after the defaults change.
type KDFParams struct {
	MemoryKiB uint32 `json:"m"`
	Time      uint32 `json:"t"`
	Threads   uint8  `json:"p"`
}

// DefaultKDF costs about 1 s on the appliance's 2-core machines.
var DefaultKDF = KDFParams{MemoryKiB: 256 * 1024, Time: 2, Threads: 2}

// Options configure Open.
type Options struct {
	Password    []byte        // the master password; required unless Insecure
	Insecure    bool          // passwordless demo mode: the DEK is stored unwrapped
	LockTimeout time.Duration // how long to wait for the file lock (default 1 s)
	KDF         KDFParams     // for a new store; zero means DefaultKDF
	Now         func() time.Time
	Logger      *slog.Logger // default slog.Default(); never given a secret
	AuditSync   AuditSync    // when Append returns (journal.go); default AuditSyncBatch
}

// Role is a user's role.
type Role string

// The roles.
const (
	RoleOwner    Role = "owner"
	RoleAdmin    Role = "admin"
	RoleApprover Role = "approver"
	RoleViewer   Role = "viewer"
)

// User is a human who administers the appliance.
type User struct {
	ID           uint64    `json:"id"`
	Email        string    `json:"email"`
	Role         Role      `json:"role"`
	PasswordHash string    `json:"password_hash"` // Argon2id PHC string, made by admin
	CreatedAt    time.Time `json:"created_at"`
}

// Session is a logged-in human; only the token's SHA-256 is kept.
type Session struct {
	TokenHash [32]byte  `json:"-"`
	UserID    uint64    `json:"user_id"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	LastSeen  time.Time `json:"last_seen"`
}

// Vault groups credentials, services and agents.
type Vault struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by"`
}

// Credential describes a stored secret. It never holds the value.
type Credential struct {
	Vault     string    `json:"vault"`
	Key       string    `json:"key"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	UpdatedBy string    `json:"updated_by"`
	// Undecryptable: the stored ciphertext did not authenticate when the
	// store was opened (the record was altered or moved); the data path
	// denies it until it is set again.
	Undecryptable bool `json:"undecryptable,omitempty"`
}

// AgentRecord is an agent as stored.
type AgentRecord struct {
	policy.Agent
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by"`
}

// AuditQuery filters AuditList. Zero fields do not filter. Rows come newest
// first; Cursor, when non-zero, returns rows with Seq < Cursor.
type AuditQuery struct {
	Vault    string
	Agent    string
	User     string
	Action   string
	Decision string
	Since    time.Time
	Until    time.Time
	Limit    int // default 100, at most 1000
	Cursor   uint64
}
