package admin

import (
	"sync"
	"time"
)

// Login throttling: once an email or a client IP has failed freeFailures
// times, each failure blocks that key for a doubling delay (1 s, 2 s, 4 s,
// ... at most maxBlock); attempts while blocked are refused with 429 without
// checking the password. A success clears the email's and the IP's
// record. Records idle for forgetAfter are dropped.
const (
	freeFailures = 5
	maxBlock     = 15 * time.Minute
	forgetAfter  = time.Hour
	pruneAbove   = 4096
)

type loginLimiter struct {
	now func() time.Time

	mu   sync.Mutex
	keys map[string]*failRecord
}

type failRecord struct {
	fails int
	until time.Time // blocked before this instant
	last  time.Time
}

func newLoginLimiter(now func() time.Time) *loginLimiter {
	return &loginLimiter{now: now, keys: map[string]*failRecord{}}
}

// blocked returns how long the longest-blocked key must still wait, or 0.
func (l *loginLimiter) blocked(keys ...string) time.Duration {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var wait time.Duration
	for _, k := range keys {
		if r := l.keys[k]; r != nil && now.Before(r.until) {
			wait = max(wait, r.until.Sub(now))
		}
	}
	return wait
}

// fail records one failed attempt for every key.
func (l *loginLimiter) fail(keys ...string) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.keys) > pruneAbove {
		for k, r := range l.keys {
			if now.Sub(r.last) > forgetAfter && !now.Before(r.until) {
				delete(l.keys, k)
			}
		}
	}
	for _, k := range keys {
		r := l.keys[k]
		if r == nil || now.Sub(r.last) > forgetAfter {
			r = &failRecord{}
			l.keys[k] = r
		}
		r.fails++
		r.last = now
		if over := r.fails - freeFailures; over >= 0 {
			block := maxBlock
			if over < 20 {
				block = min(time.Second<<over, maxBlock)
			}
			r.until = now.Add(block)
		}
	}
}

// success clears the keys' records.
func (l *loginLimiter) success(keys ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		delete(l.keys, k)
	}
}
