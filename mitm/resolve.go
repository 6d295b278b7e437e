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

var (
	// Refused unless AllowPrivateUpstreams.
	privatePrefixes = mustPrefixes(
		"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "172.16.0.0/12",
		"192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "fc00::/7", "fec0::/10",
	)
	// Always refused: link-local (cloud metadata lives there), documentation,
	// multicast, reserved, and v6 ranges that embed or tunnel v4.
	forbiddenPrefixes = mustPrefixes(
		"169.254.0.0/16", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
		"::/128", "::1/128", "fe80::/10", "ff00::/8", "100::/64", "2001::/32", "2001:db8::/32", "2002::/16",
		"64:ff9b::/96", "64:ff9b:1::/48", "fd00:ec2::254/128",
	)
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// upstreamIPAllowed reports whether the broker may dial ip.
func (b *Broker) upstreamIPAllowed(ip netip.Addr) bool {
	ip = ip.Unmap()
	if !ip.IsValid() || ip.IsUnspecified() {
		return false
	}
	for _, p := range forbiddenPrefixes {
		if p.Contains(ip) {
			// ::1 is loopback: allowed with private upstreams, like 127/8.
			return b.cfg.AllowPrivateUpstreams && ip.IsLoopback()
		}
	}
	if b.cfg.AllowPrivateUpstreams {
		return true
	}
	for _, p := range privatePrefixes {
		if p.Contains(ip) {
			return false
		}
	}
	return true
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
