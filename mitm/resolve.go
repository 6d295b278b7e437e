package mitm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/agentvault/agent-vault/policy"
)

// resolver caches the broker's own resolutions per name, so destination
// binding does not query DNS per connection. Concurrent lookups of one name
// are coalesced; failures are cached briefly.
type resolver struct {
	fn    func(ctx context.Context, host string) ([]netip.Addr, error)
	ttl   time.Duration
	now   func() time.Time
	mu    sync.Mutex
	cache map[string]*resEntry
}

type resEntry struct {
	done  chan struct{} // closed when addrs/err are set
	at    time.Time
	addrs []netip.Addr
	err   error
}

const (
	resolveTimeout  = 5 * time.Second
	negativeTTL     = 5 * time.Second
	maxResolveCache = 10000
)

func newResolver(fn func(context.Context, string) ([]netip.Addr, error), ttl time.Duration, now func() time.Time) *resolver {
	return &resolver{fn: fn, ttl: ttl, now: now, cache: map[string]*resEntry{}}
}

// lookup returns the addresses of host. An entry older than maxAge (0: the
// TTL) is refreshed.
func (r *resolver) lookup(ctx context.Context, host string, maxAge time.Duration) ([]netip.Addr, error) {
	if maxAge <= 0 {
		maxAge = r.ttl
	}
	r.mu.Lock()
	e := r.cache[host]
	if e != nil {
		select {
		case <-e.done:
			age := r.now().Sub(e.at)
			fresh := age < maxAge && (e.err == nil || age < negativeTTL)
			if fresh {
				r.mu.Unlock()
				return e.addrs, e.err
			}
			e = nil
		default: // in flight: wait for it below
		}
	}
	if e != nil {
		r.mu.Unlock()
		select {
		case <-e.done:
			return e.addrs, e.err
		case <-ctx.Done():
			return nil, fmt.Errorf("resolve %s: %w", host, ctx.Err())
		}
	}
	if len(r.cache) >= maxResolveCache {
		r.evictLocked()
	}
	e = &resEntry{done: make(chan struct{})}
	r.cache[host] = e
	r.mu.Unlock()

	// The lookup is not tied to the first caller's context: others wait on
	// it. It is bounded by resolveTimeout.
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resolveTimeout)
	addrs, err := r.fn(lctx, host)
	cancel()
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	if err == nil && len(addrs) == 0 {
		err = errors.New("no addresses")
	}
	if err != nil {
		err = fmt.Errorf("resolve %s: %w", host, err)
	}
	r.mu.Lock()
	e.addrs, e.err, e.at = addrs, err, r.now()
	close(e.done)
	r.mu.Unlock()
	return addrs, err
}

func (r *resolver) evictLocked() {
	now := r.now()
	for k, e := range r.cache {
		select {
		case <-e.done:
			if now.Sub(e.at) >= r.ttl {
				delete(r.cache, k)
			}
		default:
		}
	}
	for k, e := range r.cache { // still full: drop arbitrary settled entries
		if len(r.cache) < maxResolveCache*9/10 {
			return
		}
		select {
		case <-e.done:
			delete(r.cache, k)
		default:
		}
	}
}

// defaultResolve queries Config.UpstreamDNS (or the system's servers) with
// Go's resolver, on sockets that carry the bypass mark.
func (b *Broker) defaultResolve(ctx context.Context, host string) ([]netip.Addr, error) {
	server := b.cfg.UpstreamDNS
	if server != "" {
		if _, _, err := net.SplitHostPort(server); err != nil {
			server = net.JoinHostPort(server, "53")
		}
	}
	r := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
			d := net.Dialer{Control: b.cfg.DialControl}
			if server != "" {
				address = server
			}
			return d.DialContext(ctx, network, address)
		},
	}
	return r.LookupNetIP(ctx, "ip", host)
}

// upstreamIPAllowed reports whether the broker may dial ip: the same
// judgement the DNS proxy applies to the answers it hands agents.
func (b *Broker) upstreamIPAllowed(ip netip.Addr) bool {
	return policy.UpstreamAddrAllowed(ip, b.cfg.AllowPrivateUpstreams)
}

var errUpstreamForbidden = errors.New("upstream address is in a forbidden range")

// dialControl is every upstream socket's last check before connect(2): the
// address must be allowed, then the configured control (bypass mark) runs.
func (b *Broker) dialControl(network, address string, c syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("dial control: %w", err)
	}
	if !b.upstreamIPAllowed(ap.Addr()) {
		return fmt.Errorf("dial %s: %w", address, errUpstreamForbidden)
	}
	if b.cfg.DialControl != nil {
		return b.cfg.DialControl(network, address, c)
	}
	return nil
}
