package scrub

import (
	"bytes"
	"io"
	"sync"
)

// readChunk is how much a reader asks its source for at once (plus room for
// the held tail).
const readChunk = 32 << 10

// pooledMax is the longest buffer (readChunk plus a held tail) kept in
// bufPool; readers for longer forms allocate their own.
const pooledMax = readChunk + 4<<10

// bufPool recycles reader buffers: a reader takes one at its first Read and
// gives it back once its source ended and everything was returned, so a
// request's response costs no 32 KiB allocation.
var bufPool = sync.Pool{New: func() any { b := make([]byte, pooledMax); return &b }}

func getBuf(n int) []byte {
	if n > pooledMax {
		return make([]byte, n)
	}
	return (*bufPool.Get().(*[]byte))[:n]
}

func putBuf(b []byte) {
	if cap(b) == pooledMax {
		b = b[:pooledMax]
		bufPool.Put(&b)
	}
}

// maxEmptyReads bounds how often a source may return nothing without an
// error before Read gives up with io.ErrNoProgress.
const maxEmptyReads = 100

// reader redacts forms from a stream. Its buffer holds:
//
//	buf[:rpos]      emitted
//	buf[rpos:safe]  processed (markers written), ready to emit
//	buf[safe:n]     held: could be the start of a form; scanned again
//	                once more bytes arrive
//
// The first pending bytes of the held part belong to an occurrence that
// started in an emitted part and must be masked when emitted.
type reader struct {
	s       *Scrubber
	src     io.ReadCloser
	buf     []byte // nil before the first Read and after the last
	rpos    int
	safe    int
	n       int
	pending int
	err     error // from src, returned once the buffer is drained
	ivs     []interval
}

func (r *reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for empty := 0; ; {
		if r.rpos < r.safe {
			k := copy(p, r.buf[r.rpos:r.safe])
			r.rpos += k
			return k, nil
		}
		if r.err != nil {
			// drained: only Read touches buf, so it can go back now
			if r.buf != nil {
				putBuf(r.buf)
				r.buf = nil
			}
			return 0, r.err
		}
		if r.buf == nil {
			r.buf = getBuf(readChunk + r.s.maxLen)
		}
		// move the held tail to the front and read after it
		r.n = copy(r.buf, r.buf[r.safe:r.n])
		r.rpos, r.safe = 0, 0
		m, err := r.src.Read(r.buf[r.n:])
		r.n += m
		switch {
		case err == io.EOF:
			r.process(true)
			r.err = io.EOF
		case err != nil:
			// The stream is broken: emit what is safe and drop the held
			// tail, which may be the start of a secret.
			r.process(false)
			r.n = r.safe
			r.err = err
		case m == 0:
			if empty++; empty >= maxEmptyReads {
				return 0, io.ErrNoProgress
			}
		default:
			empty = 0
			r.process(false)
		}
	}
}

// process scans buf[:n], decides how much is safe to emit and masks it.
func (r *reader) process(final bool) {
	r.safe, r.pending, r.ivs = r.s.window(r.buf[:r.n], final, r.pending, r.ivs[:0])
}

// Window is the step of a stream scrubber for callers that frame the stream
// themselves (WebSocket messages): w is the bytes held back last time
// (w[:heldLen], unmasked) followed by new ones; pending is what the last call
// returned (0 at the start). It masks w[:safe], the part that can be sent
// now: all of w when final, else all but a tail that could begin a value.
// The caller sends w[:safe] and keeps w[safe:] as it is for the next call,
// which must start with it. Values overlapping each other or the held tail
// are found as by Reader.
func (s *Scrubber) Window(w []byte, final bool, pending int) (safe, nextPending int) {
	safe, nextPending, _ = s.window(w, final, pending, nil)
	return safe, nextPending
}

// window is Window with a scratch interval slice.
func (s *Scrubber) window(w []byte, final bool, pending int, ivs []interval) (safe, nextPending int, scratch []interval) {
	safe = len(w)
	if !final {
		safe = s.heldFrom(w)
	}
	if pending > 0 {
		ivs = append(ivs, interval{0, min(pending, len(w))})
	}
	ivs = s.find(w, safe, ivs)
	if pending > 0 {
		ivs = mergeIntervals(ivs, 0)
	}
	maskIntervals(w, ivs, safe)
	for _, iv := range ivs {
		if iv.hi > safe {
			nextPending = max(nextPending, iv.hi-safe)
		}
	}
	return safe, nextPending, ivs[:0]
}

// heldFrom returns the first position of w's tail that could start a form
// not yet complete (w[p:] a proper prefix of a form), or len(w).
func (s *Scrubber) heldFrom(w []byte) int {
	for p := max(0, len(w)-s.maxLen+1); p < len(w); p++ {
		c := w[p]
		if s.first[c>>6]&(1<<(c&63)) == 0 {
			continue
		}
		rest := w[p:]
		for _, f := range s.forms {
			if len(rest) < len(f) && bytes.HasPrefix(f, rest) {
				return p
			}
		}
	}
	return len(w)
}

// Close closes the source.
func (r *reader) Close() error { return r.src.Close() }
