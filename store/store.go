package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/agentvault/agent-vault/audit"
)

// More errors, next to those declared in api.go.
var (
	// ErrPasswordless is returned when a passwordless (demo) store is opened
	// with a master password, or without Options.Insecure.
	ErrPasswordless = errors.New("the store was created without a master password (passwordless demo mode)")
	// ErrClosed is returned by every method once Close has begun.
	ErrClosed = errors.New("the store is closed")
)

// SchemaVersion is the layout this code reads and writes. Open migrates
// older files up to it and refuses newer ones.
const SchemaVersion = 2

// Bucket names. They are also the first half of every ciphertext's
// associated data, so they must never be renamed without a migration.
const (
	bucketMeta        = "meta"
	bucketUsers       = "users"
	bucketSessions    = "sessions"
	bucketVaults      = "vaults"
	bucketCredentials = "credentials"
	bucketServices    = "services"
	bucketAgents      = "agents"
	bucketProposals   = "proposals"
	bucketAudit       = "audit"
)

// allBuckets is the schema-2 set, created for a new store.
var allBuckets = []string{
	bucketMeta, bucketUsers, bucketSessions, bucketVaults, bucketCredentials,
	bucketServices, bucketAgents, bucketProposals, bucketAudit,
}

// Keys of the meta bucket.
var (
	metaSchema        = []byte("schema")         // 8-byte big-endian schema version
	metaKeys          = []byte("keys")           // keysRecord (JSON)
	metaPolicyVersion = []byte("policy_version") // 8-byte big-endian change counter
	metaCACert        = []byte("ca_cert")        // DER, in clear
	metaCAKey         = []byte("ca_key")         // DER, sealed with the DEK
	metaDEKLabel      = []byte("dek")            // associated data of the wrapped DEK
)

// Store is the open bbolt file with its unwrapped data key.
type Store struct {
	db       *bolt.DB
	path     string
	aead     *sealer
	insecure bool
	created  bool // Open found no store in the file and is initializing it
	now      func() time.Time
	log      *slog.Logger

	// secrets is the decrypted credential cache read by Secret; credMu
	// orders its copy-on-write updates in commit order.
	secrets       atomic.Pointer[secretMap]
	credMu        sync.Mutex
	undecryptMu   sync.Mutex
	undecryptable map[secretKey]struct{} // see isUndecryptable

	audited subscribers // new audit rows

	// onPolicyChange runs synchronously after each policy-relevant commit
	// (SetOnPolicyChange); policyMu serializes its calls.
	onPolicyChange atomic.Pointer[func()]
	policyMu       sync.Mutex

	// the audit chain head, its journal and the group-commit folder
	jr        journal
	auditSync AuditSync
	stats     writerStats
	closeMu   sync.Mutex
	closed    bool
}

// keysRecord is meta/keys: how the DEK is protected.
type keysRecord struct {
	V            int       `json:"v"`
	Passwordless bool      `json:"passwordless,omitempty"`
	KDF          KDFParams `json:"kdf"`
	Salt         []byte    `json:"salt,omitempty"`
	WrappedDEK   []byte    `json:"wrapped_dek,omitempty"` // nonce || AES-256-GCM(KEK, DEK)
	DEK          []byte    `json:"dek,omitempty"`         // only in passwordless mode
}

// Open opens (creating if missing) the store file at path, mode 0600, waits
// at most opt.LockTimeout for the file lock (ErrLocked), runs migrations
// (ErrNewerSchema for a file from a newer version) and unlocks the data key
// with the master password (ErrWrongPassword, ErrPasswordRequired). A failed
// Open changes nothing on disk.
//
// The order is: read meta in a read-only transaction, check the schema,
// unlock the data key, and only then write (migrate or initialize).
func Open(path string, opt Options) (*Store, error) {
	if opt.Insecure && len(opt.Password) > 0 {
		return nil, fmt.Errorf("open store: %w: both a master password and passwordless mode were given; choose one", ErrInvalid)
	}
	_, statErr := os.Stat(path)
	isNew := errors.Is(statErr, fs.ErrNotExist)
	if isNew && !opt.Insecure && len(opt.Password) == 0 {
		return nil, fmt.Errorf("create store %s: %w (or choose passwordless demo mode)", path, ErrPasswordRequired)
	}
	timeout := opt.LockTimeout
	if timeout <= 0 {
		timeout = time.Second
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: %w (waited %s; is another agent-vault server running on the same data directory?)", path, ErrLocked, timeout)
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{
		db:        db,
		path:      path,
		now:       opt.Now,
		log:       opt.Logger,
		auditSync: opt.AuditSync,
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if err := s.open(opt, isNew); err != nil {
		s.abandonJournal()
		_ = db.Close()
		if s.created {
			// only a file this call created and initialized is removed
			_ = os.Remove(path)
		}
		return nil, err
	}
	// Tighten a file another tool left readable to others.
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(path, 0o600); err != nil {
			s.log.Warn("store file is readable by others and could not be restricted", "path", path, "err", err)
		}
	}
	if s.insecure {
		s.log.Warn("STORE HAS NO MASTER PASSWORD: credential values are NOT protected at rest; use this mode for demos only", "path", path)
	}
	go s.foldLoop()
	return s, nil
}

// open reads meta, checks the schema, unlocks the DEK, then initializes or
// migrates, then loads the secret cache.
func (s *Store) open(opt Options, isNew bool) error {
	var (
		schema  uint64
		keys    keysRecord
		hasMeta bool
		empty   bool
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket([]byte(bucketMeta))
		if m == nil {
			empty = tx.ForEach(func([]byte, *bolt.Bucket) error { return errStop }) == nil
			return nil
		}
		hasMeta = true
		v := m.Get(metaSchema)
		if len(v) != 8 {
			return fmt.Errorf("%w: meta has no valid schema version", errNotAStore)
		}
		schema = binary.BigEndian.Uint64(v)
		if schema > SchemaVersion {
			return nil
		}
		raw := m.Get(metaKeys)
		if raw == nil {
			return fmt.Errorf("%w: meta has no key record", errNotAStore)
		}
		if err := json.Unmarshal(raw, &keys); err != nil {
			return fmt.Errorf("%w: decode key record: %v", errNotAStore, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read store %s: %w", s.path, err)
	}
	if !hasMeta {
		if !isNew && !empty {
			return fmt.Errorf("read store %s: %w: it has data but no meta bucket", s.path, errNotAStore)
		}
		if !opt.Insecure && len(opt.Password) == 0 {
			return fmt.Errorf("create store %s: %w (or choose passwordless demo mode)", s.path, ErrPasswordRequired)
		}
		s.created = isNew
		if err := s.openJournal(true); err != nil {
			return err
		}
		return s.initialize(opt)
	}
	if schema > SchemaVersion {
		return fmt.Errorf("open store %s: %w (file schema %d, this build reads up to %d): upgrade agent-vault; the file was not changed", s.path, ErrNewerSchema, schema, SchemaVersion)
	}
	if schema < 1 {
		return fmt.Errorf("open store %s: %w: schema version %d", s.path, errNotAStore, schema)
	}
	dek, err := unlock(keys, opt)
	if err != nil {
		return fmt.Errorf("unlock store %s: %w", s.path, err)
	}
	if s.aead, err = newSealer(dek); err != nil {
		return fmt.Errorf("unlock store %s: %w", s.path, err)
	}
	s.insecure = keys.Passwordless
	if err := s.openJournal(false); err != nil {
		return fmt.Errorf("open store %s: %w", s.path, err)
	}
	if schema < SchemaVersion {
		if err := s.migrate(schema); err != nil {
			return fmt.Errorf("migrate store %s from schema %d to %d: %w", s.path, schema, SchemaVersion, err)
		}
	}
	return s.loadSecrets()
}

var (
	errStop      = errors.New("stop")
	errNotAStore = errors.New("not an agent-vault store")
)

// initialize writes the schema-2 layout and a fresh, wrapped DEK.
func (s *Store) initialize(opt Options) error {
	dek, keys, err := newKeys(opt)
	if err != nil {
		return fmt.Errorf("create store %s: %w", s.path, err)
	}
	if s.aead, err = newSealer(dek); err != nil {
		return fmt.Errorf("create store %s: %w", s.path, err)
	}
	s.insecure = keys.Passwordless
	raw, err := json.Marshal(keys)
	if err != nil {
		return fmt.Errorf("create store %s: encode key record: %w", s.path, err)
	}
	err = s.writeTx(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists([]byte(name)); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		m := tx.Bucket([]byte(bucketMeta))
		if err := m.Put(metaSchema, be64(SchemaVersion)); err != nil {
			return err
		}
		if err := m.Put(metaKeys, raw); err != nil {
			return err
		}
		if err := m.Put(metaPolicyVersion, be64(1)); err != nil {
			return err
		}
		mode := "master password"
		if keys.Passwordless {
			mode = "passwordless"
		}
		return s.appendTx(tx, &audit.Event{Actor: audit.System, Action: "store.create", Target: mode})
	})
	if err != nil {
		return fmt.Errorf("create store %s: %w", s.path, err)
	}
	s.secrets.Store(&secretMap{m: map[secretKey][]byte{}})
	return nil
}

// Close commits every journaled audit row, then closes the file.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return ErrClosed
	}
	s.closed = true
	s.closeMu.Unlock()
	s.closeJournal()
	s.secrets.Store(&secretMap{}) // a closed store serves no secret
	s.audited.closeAll()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store %s: %w", s.path, err)
	}
	return nil
}

// Insecure reports whether the store runs without a master password.
func (s *Store) Insecure() bool { return s.insecure }

// Path is the store file's path.
func (s *Store) Path() string { return s.path }

// SetOnPolicyChange registers fn to run synchronously after every committed
// change to vaults, credentials, services or agents (and proposals applied), before the
// mutating method returns, so a caller that gets an answer — the admin API —
// knows the data path already enforces the change. Calls are serialized, so
// fn may rebuild and swap a snapshot without its own lock; fn must not
// mutate the store.
func (s *Store) SetOnPolicyChange(fn func()) { s.onPolicyChange.Store(&fn) }

// policyChanged runs the synchronous hook.
func (s *Store) policyChanged() {
	if fn := s.onPolicyChange.Load(); fn != nil && *fn != nil {
		s.policyMu.Lock()
		(*fn)()
		s.policyMu.Unlock()
	}
}

// AuditAppended returns a coalesced poke on new audit rows (for live tails);
// cancel ends the subscription.
func (s *Store) AuditAppended() (ch <-chan struct{}, cancel func()) { return s.audited.subscribe() }

// subscribers hands out coalescing notification channels.
type subscribers struct {
	mu     sync.Mutex
	next   int
	subs   map[int]chan struct{}
	closed bool
}

func (p *subscribers) subscribe() (<-chan struct{}, func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ch := make(chan struct{}, 1)
	if p.closed {
		close(ch)
		return ch, func() {}
	}
	if p.subs == nil {
		p.subs = map[int]chan struct{}{}
	}
	id := p.next
	p.next++
	p.subs[id] = ch
	return ch, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		delete(p.subs, id)
	}
}

// poke wakes every subscriber without ever blocking.
func (p *subscribers) poke() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ch := range p.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// closeAll closes every subscription channel so waiters notice Close.
func (p *subscribers) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, ch := range p.subs {
		close(ch)
		delete(p.subs, id)
	}
	p.closed = true
}

// mutation describes one audited change made by update.
type mutation struct {
	event  audit.Event
	policy bool // the change affects policy snapshots: bump the version, poke Changed
}

// update runs fn and appends m's audit event in one Update transaction, so a
// change and its audit row commit together or not at all.
func (s *Store) update(m *mutation, fn func(tx *bolt.Tx) error) error {
	return s.updateEvents(m.policy, func(tx *bolt.Tx) ([]audit.Event, error) {
		if err := fn(tx); err != nil {
			return nil, err
		}
		return []audit.Event{m.event}, nil
	})
}

// be64 encodes a big-endian key for numbered records.
func be64(n uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], n)
	return b[:]
}

// pairKey is the key of a record scoped to a vault: vault 0x00 name. Names
// never contain 0x00 (policy.ValidName), so the split is unambiguous.
func pairKey(vault, name string) []byte {
	k := make([]byte, 0, len(vault)+1+len(name))
	k = append(k, vault...)
	k = append(k, 0)
	return append(k, name...)
}

// vaultPrefix is the common prefix of a vault's pairKeys.
func vaultPrefix(vault string) []byte {
	return append([]byte(vault), 0)
}

// bucket returns a bucket that Open guaranteed exists.
func bucket(tx *bolt.Tx, name string) *bolt.Bucket {
	b := tx.Bucket([]byte(name))
	if b == nil {
		panic("store: bucket " + name + " missing after open")
	}
	return b
}
