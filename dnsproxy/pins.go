package dnsproxy

import (
	"container/list"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Lease bounds: a pin lives for its answer's TTL plus a minute, at least a
// minute and at most an hour, and longer while a connection holds it.
const (
	minLease = 60 * time.Second
	maxLease = time.Hour
	// maxAnswerTTL is the largest TTL handed to agents, so an agent's cache
	// always expires at least a minute before the pin does.
	maxAnswerTTL = uint32((maxLease - minLease) / time.Second)
	// evictScan bounds how far from the LRU end eviction looks for an entry
	// no connection holds.
	evictScan = 64
)

// leaseFor returns clamp(ttl + 60 s, 60 s, 1 h).
func leaseFor(ttl uint32) time.Duration {
	d := time.Duration(ttl)*time.Second + minLease
	return min(max(d, minLease), maxLease)
}

type pinKey struct {
	host string
	ip   netip.Addr
}

type pin struct {
	key     pinKey
	expires time.Time
	holds   int
	elem    *list.Element
	gone    bool // removed from its table (expired, evicted or purged)
}

type agentPins struct {
	byKey map[pinKey]*pin
	lru   list.List // front: most recently used; values are *pin
}

// pinTable holds, per agent, the (name, address) pairs the proxy answered,
// each with a lease. It is bounded per agent: past max entries the least
// recently used entry no connection holds is evicted (or, if all are held,
// the least recently used one), and counted.
type pinTable struct {
	mu        sync.Mutex
	max       int
	now       func() time.Time
	agents    map[string]*agentPins
	evictions atomic.Uint64
}

func newPinTable(max int, now func() time.Time) *pinTable {
	return &pinTable{max: max, now: now, agents: map[string]*agentPins{}}
}

// put pins ip for (agent, host) for at least lease from now.
func (t *pinTable) put(agent, host string, ip netip.Addr, lease time.Duration) {
	now := t.now()
	k := pinKey{host, ip.Unmap()}
	t.mu.Lock()
	defer t.mu.Unlock()
	ap := t.agents[agent]
	if ap == nil {
		ap = &agentPins{byKey: map[pinKey]*pin{}}
		t.agents[agent] = ap
	}
	if p := ap.byKey[k]; p != nil {
		if e := now.Add(lease); e.After(p.expires) {
			p.expires = e
		}
		ap.lru.MoveToFront(p.elem)
		return
	}
	t.sweepLocked(ap, now)
	for len(ap.byKey) >= t.max {
		t.evictLocked(ap)
	}
	p := &pin{key: k, expires: now.Add(lease)}
	p.elem = ap.lru.PushFront(p)
	ap.byKey[k] = p
}

// sweepLocked drops expired, unheld entries from the LRU end, a bounded
// number at a time.
func (t *pinTable) sweepLocked(ap *agentPins, now time.Time) {
	e := ap.lru.Back()
	for i := 0; e != nil && i < evictScan; i++ {
		prev := e.Prev()
		if p := e.Value.(*pin); p.holds == 0 && !now.Before(p.expires) {
			removeLocked(ap, p)
		}
		e = prev
	}
}

func (t *pinTable) evictLocked(ap *agentPins) {
	victim := ap.lru.Back()
	for e, i := victim, 0; e != nil && i < evictScan; e, i = e.Prev(), i+1 {
		if e.Value.(*pin).holds == 0 {
			victim = e
			break
		}
	}
	if victim == nil {
		return
	}
	removeLocked(ap, victim.Value.(*pin))
	t.evictions.Add(1)
}

func removeLocked(ap *agentPins, p *pin) {
	ap.lru.Remove(p.elem)
	delete(ap.byKey, p.key)
	p.gone = true
}

// liveLocked returns the pin if it exists and is live (unexpired or held),
// marking it recently used; an expired, unheld pin is removed.
func (t *pinTable) liveLocked(agent, host string, ip netip.Addr, now time.Time) *pin {
	ap := t.agents[agent]
	if ap == nil {
		return nil
	}
	p := ap.byKey[pinKey{host, ip.Unmap()}]
	if p == nil {
		return nil
	}
	if p.holds == 0 && !now.Before(p.expires) {
		removeLocked(ap, p)
		return nil
	}
	ap.lru.MoveToFront(p.elem)
	return p
}

func (t *pinTable) pinned(agent, host string, ip netip.Addr) bool {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.liveLocked(agent, host, ip, now) != nil
}

// acquire holds a live pin until release is called; release is idempotent.
// When the last holder releases, the lease runs for at least another minute.
func (t *pinTable) acquire(agent, host string, ip netip.Addr) (release func(), ok bool) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.liveLocked(agent, host, ip, now)
	if p == nil {
		return func() {}, false
	}
	p.holds++
	var once sync.Once
	return func() {
		once.Do(func() {
			now := t.now()
			t.mu.Lock()
			defer t.mu.Unlock()
			if p.gone {
				return
			}
			p.holds--
			if e := now.Add(minLease); p.holds == 0 && e.After(p.expires) {
				p.expires = e
			}
		})
	}, true
}

// retain drops every pin for which keep(agent, host) is false, and every
// agent left without pins.
func (t *pinTable) retain(keep func(agent, host string) bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for agent, ap := range t.agents {
		for k, p := range ap.byKey {
			if !keep(agent, k.host) {
				removeLocked(ap, p)
			}
		}
		if len(ap.byKey) == 0 {
			delete(t.agents, agent)
		}
	}
}

func (t *pinTable) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, ap := range t.agents {
		n += len(ap.byKey)
	}
	return n
}
