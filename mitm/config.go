package mitm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/mitm/ca"
	"github.com/agentvault/agent-vault/policy"
)

// Secrets returns a credential's value; the store satisfies it. The broker
// never modifies or retains the returned slice beyond the request.
type Secrets interface {
	Secret(vault, key string) ([]byte, bool)
}

// Origin is what the capture layer knows about a transparent connection: the
// destination the agent dialled before it was redirected, and the agent's
// cgroup id when the connection came from a cgroup hook (0 otherwise).
type Origin struct {
	OriginalDst netip.AddrPort
	CgroupID    uint64
}

// Config wires the broker to the rest of the appliance. CA, Secrets and Audit
// are required; everything else has a default.
type Config struct {
	CA      *ca.Authority
	Secrets Secrets
	Audit   audit.Sink

	// Origin returns a transparent connection's original destination and
	// cgroup id (SO_ORIGINAL_DST or the BPF map, wired by cmd). Required by
	// ServeTransparent.
	Origin func(c net.Conn) (Origin, error)

	// Resolve looks a name up for destination binding and for the explicit
	// proxy's upstream. Default: a Go resolver querying UpstreamDNS.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// UpstreamDNS is "host[:port]" of the resolver the default Resolve uses
	// (empty: the system's resolv.conf servers).
	UpstreamDNS string

	// DestinationAllowed, when set, may accept an original destination IP the
	// broker did not resolve itself for the name (the DNS proxy's pins).
	DestinationAllowed func(agent, host string, ip netip.Addr) bool
	// HoldDestination, when set, is called once a transparent connection's
	// original destination is bound to its name, and its release when the
	// connection closes: the DNS proxy keeps that pin alive meanwhile.
	HoldDestination func(agent, host string, ip netip.Addr) (release func())

	// UpstreamRoots verifies upstream certificates (nil: the system roots).
	UpstreamRoots *x509.CertPool
	// AllowPrivateUpstreams permits private, loopback and CGNAT upstream
	// addresses. Link-local and cloud metadata addresses stay refused.
	AllowPrivateUpstreams bool
	// DialControl is applied to every upstream socket (the bypass mark).
	DialControl func(network, address string, c syscall.RawConn) error

	// SelfAddrs are the broker's own listen addresses: a transparent
	// connection whose original destination is one of them is refused. An
	// unspecified address matches any address on that port.
	SelfAddrs []netip.AddrPort

	// Internal serves agent-vault.internal routes other than GET /v1/whoami
	// (the control plane adds /v1/services and /v1/proposals). The agent is
	// available through AgentFromContext. Nil: 404.
	Internal http.Handler

	Logger *slog.Logger
	Now    func() time.Time

	HandshakeTimeout time.Duration // default 10 s
	MaxHandshakes    int           // concurrent TLS handshakes, default 512
	ResolveTTL       time.Duration // broker-side resolution cache, default 30 s
	AuditTimeout     time.Duration // one audit append, default 5 s
}

// Broker is the data path. Make one with New, feed it listeners with
// ServeTransparent and ServeProxy, swap policy with SetPolicy, stop it with
// Shutdown.
type Broker struct {
	cfg       Config
	log       *slog.Logger
	now       func() time.Time
	snap      atomic.Pointer[policy.Snapshot]
	res       *resolver
	transport *http.Transport // HTTP/2 agents; HTTP/2 to upstreams that offer it
	upload1   *http.Transport // HTTP/1.1 agents' bodies the fast path does not take: HTTP/1.1 only
	h1        *h1Transport
	rp        *httputil.ReverseProxy
	inner     *http.Server // serves terminated and plain transparent connections
	innerLn   *chanListener
	front     *http.Server // the explicit proxy listener
	internal  http.Handler
	hs        chan struct{} // handshake slots
	tlsOuter  *tls.Config   // shared by every agent handshake: see newTLSOuter
	scrubs    scrubCache
	dialer    net.Dialer

	startOnce sync.Once
	stopSweep chan struct{}

	mu        sync.Mutex
	closed    atomic.Bool // set under mu by Shutdown; read without it by isClosed
	listeners map[net.Listener]struct{}
	conns     map[string]map[*trackedConn]struct{} // live connections by agent name ("" before identity)
	wg        sync.WaitGroup                       // every goroutine the broker starts
}

// ErrServerClosed is returned by ServeTransparent and ServeProxy after
// Shutdown.
var ErrServerClosed = http.ErrServerClosed

// New checks the configuration and builds a broker. It has no side effects:
// nothing listens and no goroutine starts until a Serve method is called.
// Until SetPolicy is called every request is denied.
func New(cfg Config) (*Broker, error) {
	if cfg.CA == nil {
		return nil, errors.New("mitm config: CA is required")
	}
	if cfg.Secrets == nil {
		return nil, errors.New("mitm config: Secrets is required")
	}
	if cfg.Audit == nil {
		return nil, errors.New("mitm config: Audit is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = 512
	}
	if cfg.ResolveTTL <= 0 {
		cfg.ResolveTTL = 30 * time.Second
	}
	if cfg.AuditTimeout <= 0 {
		cfg.AuditTimeout = 5 * time.Second
	}
	b := &Broker{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "mitm"),
		now:       cfg.Now,
		hs:        make(chan struct{}, cfg.MaxHandshakes),
		stopSweep: make(chan struct{}),
		listeners: map[net.Listener]struct{}{},
		conns:     map[string]map[*trackedConn]struct{}{},
		dialer: net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		},
	}
	b.dialer.Control = b.dialControl
	resolve := cfg.Resolve
	if resolve == nil {
		resolve = b.defaultResolve
	}
	b.res = newResolver(resolve, cfg.ResolveTTL, cfg.Now)
	b.snap.Store(policy.NewSnapshot(policy.Input{}))
	b.tlsOuter = b.newTLSOuter()
	b.transport = b.newTransport(true)
	b.upload1 = b.newTransport(false)
	b.h1 = newH1Transport(b.dialUpstream, b.upstreamTLS())
	b.rp = b.newReverseProxy()
	b.internal = b.newInternal()
	errLog := slog.NewLogLogger(b.log.Handler(), slog.LevelDebug)
	b.innerLn = newChanListener()
	b.inner = &http.Server{
		Handler:           http.HandlerFunc(b.serveTerminated),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ConnContext:       b.innerConnContext,
		ErrorLog:          errLog,
	}
	b.front = &http.Server{
		Handler:           http.HandlerFunc(b.serveProxy),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ConnContext:       b.frontConnContext,
		ErrorLog:          errLog,
	}
	return b, nil
}

// SetPolicy swaps the policy snapshot. The next request on every connection
// is decided on it; live connections of agents that are no longer active
// (revoked, deleted or expired) are closed before SetPolicy returns.
func (b *Broker) SetPolicy(s *policy.Snapshot) {
	if s == nil {
		s = policy.NewSnapshot(policy.Input{})
	}
	b.snap.Store(s)
	b.scrubs.reset()
	b.closeInactive()
}

// newTLSOuter is the one configuration every agent-facing handshake
// starts from. Its GetConfigForClient decides on the ClientHello (the
// connection's state travels on the trackedConn). Being shared, its
// automatically rotated session ticket keys serve every connection, so an
// agent can resume a session on its next connection; resumption still runs
// GetConfigForClient, so every connection is decided on its own ClientHello.
func (b *Broker) newTLSOuter() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			tc, ok := hello.Conn.(*trackedConn)
			if !ok || tc.st == nil {
				return nil, errDenied
			}
			return b.decide(hello, tc.st)
		},
	}
}

// loopbackCurves is the key exchange offered to agents on the broker's own
// host (shape L, and shape E on loopback): classical X25519, then P-256.
// Hybrid post-quantum X25519MLKEM768 (Go's default, which it always prefers
// when both sides offer it) costs about a quarter more per handshake and
// protects nothing on a connection that never leaves the host. Agents on
// other hosts (shape G) keep Go's defaults, post-quantum first.
var loopbackCurves = []tls.CurveID{tls.X25519, tls.CurveP256}

// tlsServerConfig is the per-connection configuration after the ClientHello
// was accepted.
func tlsServerConfig(leaf *tls.Certificate, peer netip.AddrPort) *tls.Config {
	cfg := &tls.Config{
		Certificates: []tls.Certificate{*leaf},
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	}
	if peer.Addr().Unmap().IsLoopback() {
		cfg.CurvePreferences = loopbackCurves
	}
	return cfg
}
