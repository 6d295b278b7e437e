package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/store"
)

// Store is what the admin API needs of the store. *store.Store satisfies it;
// every mutation takes the acting user, and the store audits it.
type Store interface {
	Insecure() bool

	HasOwner() (bool, error)
	Setup(email, passwordHash string) (store.User, error)
	UserByEmail(email string) (store.User, error)
	UserByID(id uint64) (store.User, error)
	CreateSession(sess store.Session) error
	Session(tokenHash [32]byte) (store.Session, error)
	DeleteSession(tokenHash [32]byte) error
	DeleteExpiredSessions() (int, error)

	CreateVault(actor audit.Actor, name string) (store.Vault, error)
	Vaults() ([]store.Vault, error)
	DeleteVault(actor audit.Actor, name string) error

	SetCredential(actor audit.Actor, vault, key string, value []byte) (store.Credential, error)
	Credentials(vault string) ([]store.Credential, error)
	DeleteCredential(actor audit.Actor, vault, key string) error

	AddService(actor audit.Actor, svc policy.Service) (policy.Service, error)
	Services(vault string) ([]policy.Service, error)
	DeleteService(actor audit.Actor, vault, name string) error

	CreateAgent(actor audit.Actor, a policy.Agent) (store.AgentRecord, error)
	Agents(vault string) ([]store.AgentRecord, error)
	RevokeAgent(actor audit.Actor, name string) error
	DeleteAgent(actor audit.Actor, name string) error

	Append(ctx context.Context, ev *audit.Event) error
	AuditList(q store.AuditQuery) ([]audit.Event, uint64, error)
	AuditVerify() (uint64, error)
	AuditAfter(after uint64, q store.AuditQuery) ([]audit.Event, uint64, error)
	AuditLastSeq() (uint64, error)
	AuditAppended() (ch <-chan struct{}, cancel func())

	Account(id uint64) (store.Account, error)
	Accounts() ([]store.Account, error)
	InviteUser(actor audit.Actor, email string, role store.Role, vault string, inviteHash [32]byte, expires time.Time) (store.Account, error)
	AcceptInvite(inviteHash [32]byte, passwordHash string) (store.User, error)
	GrantRole(actor audit.Actor, email, vault string, role store.Role) (store.Account, error)
	RemoveUser(actor audit.Actor, email string) error
	TouchSession(tokenHash [32]byte, t time.Time) error

	CreateProposal(actor audit.Actor, p store.Proposal) (store.Proposal, error)
	GetProposal(id uint64) (store.Proposal, error)
	ListProposals(q store.ProposalQuery) ([]store.Proposal, error)
	ApproveProposal(actor audit.Actor, id uint64, ap store.Approval) (store.Proposal, error)
	RejectProposal(actor audit.Actor, id uint64, hash, note string) (store.Proposal, error)
	ExpireProposals() (int, error)
}

// PasswordParams are the Argon2id costs of new user password hashes.
// Existing hashes carry their own parameters.
type PasswordParams struct {
	MemoryKiB uint32
	Time      uint32
	Threads   uint8
}

// DefaultPasswordParams cost about 64 MiB and a few tens of milliseconds per
// login on the appliance's machines.
var DefaultPasswordParams = PasswordParams{MemoryKiB: 64 * 1024, Time: 1, Threads: 2}

// Config configures a Server. Store is required; every other field has a
// default.
type Config struct {
	Store  Store
	Logger *slog.Logger // default: slog.Default()

	// CACert returns the root CA certificate in PEM for GET /api/v1/ca.pem.
	// Nil means no CA yet: the endpoint answers 404 ca_unavailable.
	CACert func() ([]byte, error)
	// Ready reports readiness beyond "the store is open" (listeners bound,
	// redirect rules installed); nil means ready. /health answers 503 with
	// its error.
	Ready func() error
	// Describe adds the data path's addresses to /health (nil: none).
	Describe func(h *api.Health)

	// AllowedHosts are extra names the Host header may carry (the
	// appliance's DNS name). The listener's own address and localhost,
	// 127.0.0.1 and [::1] are always allowed.
	AllowedHosts []string

	SessionTTL  time.Duration // absolute session lifetime; default 12 h
	SessionIdle time.Duration // a session unused this long ends; default 2 h
	InviteTTL   time.Duration // how long an invite token is valid; default 72 h
	// ProposalSweep is how often Serve records expired proposals
	// (proposal.expire rows); default 1 min, negative disables. Reads report
	// expiry at once either way.
	ProposalSweep time.Duration
	// StreamHeartbeat is how often the audit stream sends a comment line to
	// keep idle connections open; default 15 s.
	StreamHeartbeat time.Duration
	Password        PasswordParams   // default DefaultPasswordParams
	Now             func() time.Time // default time.Now
	Version         string
}

// Server is the admin HTTP API.
type Server struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	handler http.Handler
	limiter *loginLimiter
	hashSem chan struct{} // bounds concurrent Argon2id work (memory)
	dummy   string        // a hash to verify against for unknown emails

	// streams end when the server shuts down (audit stream handlers
	// select on it), so Shutdown does not wait for them.
	streams    context.Context
	stopStream context.CancelFunc

	mu     sync.Mutex
	srv    *http.Server
	closed bool
}

// New checks cfg and builds the server. It has no side effects: nothing
// listens until Serve.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("admin: config needs a store")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	if cfg.SessionIdle <= 0 {
		cfg.SessionIdle = 2 * time.Hour
	}
	if cfg.InviteTTL <= 0 {
		cfg.InviteTTL = 72 * time.Hour
	}
	if cfg.ProposalSweep == 0 {
		cfg.ProposalSweep = time.Minute
	}
	if cfg.StreamHeartbeat <= 0 {
		cfg.StreamHeartbeat = 15 * time.Second
	}
	if cfg.Password == (PasswordParams{}) {
		cfg.Password = DefaultPasswordParams
	}
	if cfg.Password.MemoryKiB < 8 || cfg.Password.Time < 1 || cfg.Password.Threads < 1 {
		return nil, fmt.Errorf("admin: password hash parameters %+v are too small", cfg.Password)
	}
	for _, h := range cfg.AllowedHosts {
		if h == "" {
			return nil, errors.New("admin: empty allowed host")
		}
	}
	s := &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		now:     cfg.Now,
		limiter: newLoginLimiter(cfg.Now),
		hashSem: make(chan struct{}, 2),
	}
	dummy, err := hashPassword("not a password of anyone", cfg.Password)
	if err != nil {
		return nil, err
	}
	s.dummy = dummy
	s.streams, s.stopStream = context.WithCancel(context.Background())
	s.handler = s.routes()
	return s, nil
}

// Handler returns the API's handler with every defence in place; tests serve
// it with httptest.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve answers requests on l until Shutdown. It returns nil after Shutdown.
func (s *Server) Serve(l net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	if s.srv != nil {
		s.mu.Unlock()
		return errors.New("admin: already serving")
	}
	s.srv = srv
	s.mu.Unlock()
	srv.RegisterOnShutdown(s.stopStream)
	if s.cfg.ProposalSweep > 0 {
		go s.sweepProposals(s.streams, s.cfg.ProposalSweep)
	}
	err := srv.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("admin: serve: %w", err)
}

// Shutdown stops accepting, waits for requests in flight until ctx ends, then
// closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv := s.srv
	s.closed = true
	s.mu.Unlock()
	s.stopStream()
	if srv == nil {
		return nil
	}
	if err := srv.Shutdown(ctx); err != nil {
		srv.Close()
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	return nil
}

// sweepProposals records expired proposals every interval until ctx ends.
func (s *Server) sweepProposals(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := s.cfg.Store.ExpireProposals(); err != nil {
				s.log.Warn("admin cannot record expired proposals", "err", err)
			} else if n > 0 {
				s.log.Info("admin recorded expired proposals", "count", n)
			}
		}
	}
}
