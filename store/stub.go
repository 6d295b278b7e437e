package store

// STUB: placeholder bodies so consumers compile while the store is built.
// The store implementation replaces this file entirely; the signatures are
// the contract.

import (
	"context"
	"errors"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

var errStub = errors.New("store: not implemented yet")

// Store is the open bbolt file with its unwrapped data key.
type Store struct{}

// Open opens (creating if missing) the store file at path, mode 0600, waits
// at most opt.LockTimeout for the file lock (ErrLocked), runs migrations
// (ErrNewerSchema for a file from a newer version) and unlocks the data key
// with the master password (ErrWrongPassword, ErrPasswordRequired). A failed
// Open changes nothing on disk.
func Open(path string, opt Options) (*Store, error) { return nil, errStub }

// Close stops the audit writer after flushing it, then closes the file.
func (s *Store) Close() error { return errStub }

// Insecure reports whether the store runs without a master password.
func (s *Store) Insecure() bool { return false }

// Changed returns a channel that receives (coalesced, never blocking the
// writer) after every committed change to vaults, credentials, services or
// agents. Each call returns a new subscription; cancel ends it.
func (s *Store) Changed() (ch <-chan struct{}, cancel func()) { return nil, func() {} }

// Snapshot reads vaults, services and agents into an immutable policy
// snapshot (agent CgroupID is left for the caller to resolve).
func (s *Store) Snapshot() (*policy.Snapshot, error) { return nil, errStub }

// Secret returns a credential's value from the in-memory decrypted cache
// (kept current by every credential write; no disk read, no decryption).
// The returned slice must not be modified.
func (s *Store) Secret(vault, key string) ([]byte, bool) { return nil, false }

// CA returns the stored root CA certificate (DER) and private key (DER,
// decrypted); ErrNotFound when none is stored yet.
func (s *Store) CA() (certDER, keyDER []byte, err error) { return nil, nil, errStub }

// PutCA stores the root CA, the key encrypted with the data key.
func (s *Store) PutCA(certDER, keyDER []byte) error { return errStub }

// HasOwner reports whether setup has been done.
func (s *Store) HasOwner() (bool, error) { return false, errStub }

// Setup creates the first owner; ErrSetupDone once any user exists.
func (s *Store) Setup(email, passwordHash string) (User, error) { return User{}, errStub }

// UserByEmail finds a user (emails compare case-insensitively).
func (s *Store) UserByEmail(email string) (User, error) { return User{}, errStub }

// UserByID finds a user.
func (s *Store) UserByID(id uint64) (User, error) { return User{}, errStub }

// CreateSession stores a session.
func (s *Store) CreateSession(sess Session) error { return errStub }

// Session finds a live session by token hash; ErrNotFound if missing or expired.
func (s *Store) Session(tokenHash [32]byte) (Session, error) { return Session{}, errStub }

// DeleteSession ends a session.
func (s *Store) DeleteSession(tokenHash [32]byte) error { return errStub }

// CreateVault creates a vault (ErrExists), audited as vault.create by actor.
func (s *Store) CreateVault(actor audit.Actor, name string) (Vault, error) { return Vault{}, errStub }

// Vaults lists vaults by name.
func (s *Store) Vaults() ([]Vault, error) { return nil, errStub }

// DeleteVault deletes a vault with its credentials, services and agents.
func (s *Store) DeleteVault(actor audit.Actor, name string) error { return errStub }

// SetCredential creates or replaces a credential's value (encrypted with the
// record's bucket and key as associated data), audited as credential.set.
func (s *Store) SetCredential(actor audit.Actor, vault, key string, value []byte) (Credential, error) {
	return Credential{}, errStub
}

// Credentials lists a vault's credentials (names and times only).
func (s *Store) Credentials(vault string) ([]Credential, error) { return nil, errStub }

// DeleteCredential deletes a credential.
func (s *Store) DeleteCredential(actor audit.Actor, vault, key string) error { return errStub }

// AddService normalizes and validates svc (ErrInvalid wrapping the
// *policy.ValidationError), checks the vault and the named credential exist,
// and stores it (ErrExists for a duplicate name in the vault).
func (s *Store) AddService(actor audit.Actor, svc policy.Service) (policy.Service, error) {
	return policy.Service{}, errStub
}

// Services lists a vault's services by name.
func (s *Store) Services(vault string) ([]policy.Service, error) { return nil, errStub }

// DeleteService deletes a service.
func (s *Store) DeleteService(actor audit.Actor, vault, name string) error { return errStub }

// CreateAgent stores an agent (names are unique across vaults: ErrExists).
// The caller generated the token and passes only its hash.
func (s *Store) CreateAgent(actor audit.Actor, a policy.Agent) (AgentRecord, error) {
	return AgentRecord{}, errStub
}

// Agents lists agents of a vault, or all agents when vault is "".
func (s *Store) Agents(vault string) ([]AgentRecord, error) { return nil, errStub }

// RevokeAgent marks an agent revoked.
func (s *Store) RevokeAgent(actor audit.Actor, name string) error { return errStub }

// DeleteAgent deletes an agent.
func (s *Store) DeleteAgent(actor audit.Actor, name string) error { return errStub }

// Append records one event through the group-commit writer (audit.Sink).
func (s *Store) Append(ctx context.Context, ev *audit.Event) error { return errStub }

// AuditList returns rows matching q, newest first, and the cursor for the
// next page (0 when there is none).
func (s *Store) AuditList(q AuditQuery) (rows []audit.Event, next uint64, err error) {
	return nil, 0, errStub
}

// AuditVerify checks the whole hash chain and returns the number of rows
// checked, or an *audit.BrokenError naming the first bad row.
func (s *Store) AuditVerify() (rows uint64, err error) { return 0, errStub }

var _ audit.Sink = (*Store)(nil)
