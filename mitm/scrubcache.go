package mitm

import (
	"crypto/sha256"
	"encoding/binary"
	"sync"

	"github.com/agentvault/agent-vault/mitm/scrub"
)

// scrubCache memoizes the compiled scrubber of a set of injected values:
// computing every encoded form of a secret and planning the search costs
// more than a small request's whole scrubbing, and the same credential is
// injected again and again. Entries are keyed by a SHA-256 digest of the
// values, so the key holds no secret; the cache is bounded and emptied on
// every policy swap (a credential change rebuilds the policy), so forms of a
// replaced secret do not linger.
type scrubCache struct {
	mu sync.Mutex
	m  map[[32]byte]*scrub.Scrubber
}

const scrubCacheMax = 1024

func (c *scrubCache) get(values [][]byte) *scrub.Scrubber {
	h := sha256.New()
	var n [8]byte
	for _, v := range values {
		binary.BigEndian.PutUint64(n[:], uint64(len(v)))
		h.Write(n[:])
		h.Write(v)
	}
	var key [32]byte
	h.Sum(key[:0])
	c.mu.Lock()
	e := c.m[key]
	c.mu.Unlock()
	if e != nil {
		return e
	}
	e = scrub.New(scrub.Forms(values))
	c.mu.Lock()
	if c.m == nil || len(c.m) >= scrubCacheMax {
		c.m = map[[32]byte]*scrub.Scrubber{}
	}
	c.m[key] = e
	c.mu.Unlock()
	return e
}

func (c *scrubCache) reset() {
	c.mu.Lock()
	c.m = nil
	c.mu.Unlock()
}
