package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

// Defaults for the zero values of Config.
const (
	DefaultUpstreamTimeout = 2 * time.Second
	DefaultRatePerSecond   = 100
	DefaultBurst           = 200
	DefaultMaxPinsPerAgent = 4096
	// refusalWindow is how often a refused source or agent is audited at
	// most (unknown source, inactive agent, rate limited).
	refusalWindow = 10 * time.Second
	// maxRefusalKeys bounds the memory of refusals already audited.
	maxRefusalKeys = 4096
)

// ErrServerClosed is returned by ServeUDP and ServeTCP after Shutdown.
var ErrServerClosed = errors.New("dns proxy closed")

// Config configures a Proxy. Only Upstream is required.
type Config struct {
	// Upstream is the resolver allowed names are resolved with, "host:port"
	// (a bare host means port 53).
	Upstream string
	// UpstreamTimeout bounds one upstream exchange (UDP plus the TCP retry);
	// past it the agent gets SERVFAIL. Default 2 s.
	UpstreamTimeout time.Duration
	// Dialer, if set, dials the upstream (e.g. with a Control setting the
	// bypass mark).
	Dialer *net.Dialer
	// Identify names the agent behind a query's source address (shape G
	// source lookup, shape L BPF lookup). Nil: the snapshot's AgentBySource.
	Identify func(src netip.AddrPort) (agentName string, ok bool)
	// IdentifyConn, when set, names the agent behind a TCP connection to the
	// proxy. It is called once, when the connection is accepted, and its
	// answer holds for every query on the connection (local mode: the BPF
	// record of a captured connection is keyed by its 4-tuple and consumed
	// by the first lookup). Nil: TCP queries are identified like UDP ones,
	// by Identify with the source address.
	IdentifyConn func(c net.Conn) (agentName string, ok bool)
	// BrokerAddrs is what agent-vault.internal resolves to for a client. Nil:
	// the local address the query arrived on.
	BrokerAddrs func(src netip.AddrPort) []netip.Addr
	// IPv6 enables AAAA answers; off, AAAA gets NOERROR with no data.
	IPv6 bool
	// AllowPrivate keeps private and loopback addresses in answers for
	// allowed names (off: they are dropped, against rebinding). Addresses
	// no upstream may have (link-local, metadata, documentation...) are
	// dropped either way: policy.UpstreamAddrAllowed, which the broker
	// applies too.
	AllowPrivate bool
	// Audit records one event per query. Nil records nothing (tests, demos).
	Audit audit.Sink
	// RatePerSecond and Burst size each agent's token bucket (defaults 100
	// and 200). A negative RatePerSecond disables rate limiting.
	RatePerSecond float64
	Burst         int
	// MaxPinsPerAgent bounds each agent's pins (default 4096); past it the
	// least recently used pin is evicted and counted.
	MaxPinsPerAgent int
	Logger          *slog.Logger
	// Now is the clock (default time.Now); tests pass a fake one.
	Now func() time.Time
}

// Proxy is the DNS proxy. Its methods are safe for concurrent use.
type Proxy struct {
	cfg      Config
	upstream string
	log      *slog.Logger
	now      func() time.Time
	snap     atomic.Pointer[policy.Snapshot]
	pins     *pinTable
	rate     *limiter
	refusals *oncePerWindow
	audit    *auditQueue
	exchange exchangeFunc

	// beforeWrite, when set (tests only), runs after pins are written and
	// before the reply is sent.
	beforeWrite func(resp *dns.Msg)

	mu      sync.Mutex
	servers []*dns.Server
	closed  bool

	connMu  sync.Mutex
	connIDs map[string]connIdentity // TCP connections' agents (IdentifyConn)

	stats counters
}

type counters struct {
	queries, forwarded, denied, nodata, refused, rateLimited, servfail, rebinding atomic.Uint64
}

// New checks cfg and returns a proxy. It has no side effects: nothing is
// bound and no goroutine started until ServeUDP or ServeTCP.
func New(cfg Config) (*Proxy, error) {
	up, err := normalizeUpstream(cfg.Upstream)
	if err != nil {
		return nil, err
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if cfg.RatePerSecond == 0 {
		cfg.RatePerSecond = DefaultRatePerSecond
	}
	if cfg.Burst <= 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.MaxPinsPerAgent <= 0 {
		cfg.MaxPinsPerAgent = DefaultMaxPinsPerAgent
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := &Proxy{
		cfg:      cfg,
		upstream: up,
		log:      cfg.Logger.With("component", "dnsproxy"),
		now:      cfg.Now,
		pins:     newPinTable(cfg.MaxPinsPerAgent, cfg.Now),
		rate:     newLimiter(cfg.RatePerSecond, cfg.Burst),
		refusals: newOncePerWindow(refusalWindow, maxRefusalKeys),
		connIDs:  map[string]connIdentity{},
	}
	p.audit = newAuditQueue(cfg.Audit, p.log)
	p.exchange = p.forward
	return p, nil
}

func normalizeUpstream(s string) (string, error) {
	if s == "" {
		return "", errors.New("dns proxy needs an upstream resolver (host:port)")
	}
	if host, port, err := net.SplitHostPort(s); err == nil {
		if host == "" || port == "" {
			return "", fmt.Errorf("upstream resolver %q: host and port must not be empty", s)
		}
		return s, nil
	}
	if _, err := netip.ParseAddr(s); err == nil || !strings.Contains(s, ":") {
		return net.JoinHostPort(s, "53"), nil
	}
	return "", fmt.Errorf("upstream resolver %q is not host:port", s)
}

// SetPolicy installs a new policy snapshot. Pins of agents that are gone or
// inactive, and of names the agent's vault no longer allows, are dropped.
func (p *Proxy) SetPolicy(s *policy.Snapshot) {
	p.snap.Store(s)
	now := p.now()
	p.pins.retain(func(agent, host string) bool { return p.mayReach(s, agent, host, now) })
	p.rate.retain(func(agent string) bool { _, ok := s.Agent(agent); return ok })
}

// mayReach reports whether the snapshot lets an active agent reach host.
func (p *Proxy) mayReach(s *policy.Snapshot, agentName, host string, now time.Time) bool {
	if s == nil {
		return false
	}
	a, ok := s.Agent(agentName)
	if !ok || !a.Active(now) {
		return false
	}
	return host == policy.ReservedHost || s.HostAllowed(a.Vault, host)
}

// Pinned reports whether ip was answered to agent for host and its lease is
// live (or held), and the current policy still lets the agent reach host.
// It is the broker's destination check (mitm's DestinationAllowed).
func (p *Proxy) Pinned(agent, host string, ip netip.Addr) bool {
	host = policy.NormalizeHost(host)
	if !p.mayReach(p.snap.Load(), agent, host, p.now()) {
		return false
	}
	return p.pins.pinned(agent, host, ip)
}

// Acquire checks the pin like Pinned and, if live, holds it until release
// is called: a held pin does not expire and is evicted only if every pin of
// the agent is held. After the last release the lease runs at least another
// minute. release is never nil and may be called more than once.
func (p *Proxy) Acquire(agent, host string, ip netip.Addr) (release func(), ok bool) {
	host = policy.NormalizeHost(host)
	if !p.mayReach(p.snap.Load(), agent, host, p.now()) {
		return func() {}, false
	}
	return p.pins.acquire(agent, host, ip)
}

// Hold is Acquire without the answer: it holds the pin if there is a live
// one and otherwise returns a release that does nothing. Call it for a
// connection Pinned has accepted, and release when the connection closes.
func (p *Proxy) Hold(agent, host string, ip netip.Addr) (release func()) {
	release, _ = p.Acquire(agent, host, ip)
	return release
}

// Stats are the proxy's counters, for metrics.
type Stats struct {
	Queries      uint64 // every message handled
	Forwarded    uint64 // questions sent upstream
	Denied       uint64 // NXDOMAIN for names the agent may not reach
	NoData       uint64 // NOERROR without records by policy
	Refused      uint64 // REFUSED (unknown source, inactive agent, rate limited, ...)
	RateLimited  uint64 // subset of Refused
	ServFail     uint64 // upstream failure, rebinding drop, audit failure
	Rebinding    uint64 // answers whose addresses were all private
	AuditDropped uint64 // background audit events dropped (queue full)
	AuditFailed  uint64 // audit events the sink refused
	PinEvictions uint64
	Pins         int // pins held now (including expired ones not yet swept)
}

// Stats returns the current counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		Queries:      p.stats.queries.Load(),
		Forwarded:    p.stats.forwarded.Load(),
		Denied:       p.stats.denied.Load(),
		NoData:       p.stats.nodata.Load(),
		Refused:      p.stats.refused.Load(),
		RateLimited:  p.stats.rateLimited.Load(),
		ServFail:     p.stats.servfail.Load(),
		Rebinding:    p.stats.rebinding.Load(),
		AuditDropped: p.audit.dropped.Load(),
		AuditFailed:  p.audit.failed.Load(),
		PinEvictions: p.pins.evictions.Load(),
		Pins:         p.pins.size(),
	}
}

// ServeUDP answers queries arriving on pc until Shutdown; it then returns
// ErrServerClosed. pc is closed on return.
func (p *Proxy) ServeUDP(pc net.PacketConn) error {
	return p.serve(&dns.Server{PacketConn: pc, Net: "udp"})
}

// ServeTCP answers queries arriving on connections accepted from l until
// Shutdown; it then returns ErrServerClosed. l is closed on return.
func (p *Proxy) ServeTCP(l net.Listener) error {
	if p.cfg.IdentifyConn != nil {
		l = &identityListener{Listener: l, p: p}
	}
	return p.serve(&dns.Server{Listener: l, Net: "tcp"})
}

func (p *Proxy) serve(srv *dns.Server) error {
	srv.Handler = dns.HandlerFunc(p.serveDNS)
	srv.MsgAcceptFunc = acceptQueries
	srv.ReadTimeout = 5 * time.Second
	srv.WriteTimeout = 5 * time.Second
	srv.IdleTimeout = func() time.Duration { return 10 * time.Second }
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		closeSrvConn(srv)
		return ErrServerClosed
	}
	p.servers = append(p.servers, srv)
	p.mu.Unlock()
	p.audit.run()
	err := srv.ActivateAndServe()
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return ErrServerClosed
	}
	if err != nil {
		return fmt.Errorf("serve dns over %s: %w", srv.Net, err)
	}
	return nil
}

func closeSrvConn(srv *dns.Server) {
	if srv.PacketConn != nil {
		srv.PacketConn.Close()
	}
	if srv.Listener != nil {
		srv.Listener.Close()
	}
}

// acceptQueries lets only single-question queries reach the handler:
// responses are ignored, other opcodes get NOTIMP and messages with more or
// fewer questions (or records where a query has none) get FORMERR from the
// server itself. They name nothing, so there is nothing to audit.
func acceptQueries(dh dns.Header) dns.MsgAcceptAction {
	const qrBit = 1 << 15
	if dh.Bits&qrBit != 0 {
		return dns.MsgIgnore
	}
	if opcode := int(dh.Bits>>11) & 0xF; opcode != dns.OpcodeQuery {
		return dns.MsgRejectNotImplemented
	}
	if dh.Qdcount != 1 || dh.Ancount > 0 || dh.Nscount > 0 || dh.Arcount > 2 {
		return dns.MsgReject
	}
	return dns.MsgAccept
}

// Shutdown stops every server, waits for in-flight answers, then waits for
// queued audit events to be committed, all within ctx.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	servers := p.servers
	p.servers = nil
	p.mu.Unlock()
	var errs []error
	for _, srv := range servers {
		if err := srv.ShutdownContext(ctx); err != nil {
			// not started yet: closing its socket makes it return at once
			closeSrvConn(srv)
			if ctx.Err() != nil {
				errs = append(errs, fmt.Errorf("shut down dns server: %w", err))
			}
		}
	}
	if err := p.audit.close(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
