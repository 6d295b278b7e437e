package dnsproxy

import (
	"sync"
	"time"
)

// limiter is a token bucket per key (an agent name): rate tokens a second,
// at most burst in the bucket.
type limiter struct {
	mu      sync.Mutex
	rate    float64
	burst   float64
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(rate float64, burst int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), buckets: map[string]*bucket{}}
}

// allow takes one token from key's bucket if there is one.
func (l *limiter) allow(key string, now time.Time) bool {
	if l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens = min(l.burst, b.tokens+dt.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// retain forgets the buckets of keys for which keep is false.
func (l *limiter) retain(keep func(key string) bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k := range l.buckets {
		if !keep(k) {
			delete(l.buckets, k)
		}
	}
}

// oncePerWindow answers whether an event for key is the first in its
// window. It remembers at most max keys; past that every further key shares
// one overflow slot, so a flood of spoofed sources still yields one event
// per window and bounded memory.
type oncePerWindow struct {
	mu     sync.Mutex
	window time.Duration
	max    int
	seen   map[string]time.Time
}

const overflowKey = "\x00overflow"

func newOncePerWindow(window time.Duration, max int) *oncePerWindow {
	return &oncePerWindow{window: window, max: max, seen: map[string]time.Time{}}
}

func (o *oncePerWindow) first(key string, now time.Time) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if t, ok := o.seen[key]; ok {
		if now.Sub(t) < o.window {
			return false
		}
		o.seen[key] = now
		return true
	}
	if len(o.seen) >= o.max {
		for k, t := range o.seen {
			if now.Sub(t) >= o.window {
				delete(o.seen, k)
			}
		}
	}
	if len(o.seen) >= o.max {
		key = overflowKey
		if t, ok := o.seen[key]; ok && now.Sub(t) < o.window {
			return false
		}
	}
	o.seen[key] = now
	return true
}
