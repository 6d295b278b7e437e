package scrub

import (
	"bytes"
	"io"
	"sync"
)

// readChunk is how much a reader asks its source for at once beyond the tail
// it held back (a small read's buffer also has room for the longest form).
const readChunk = 32 << 10

// pooledMax is the longest buffer (readChunk plus a held tail) kept in
// bufPool; readers for longer forms allocate their own.
const pooledMax = readChunk + 4<<10

// bufPool recycles the buffers of small reads: a reader takes one at its
// first Read smaller than the direct threshold (see directMin) and gives it
// back once its source ended and everything was returned, so a response
// read in small pieces costs no 32 KiB allocation.
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

// directMin: a Read buffer of at least directMin bytes and twice the longest
// form is worked in directly: the source is read into it and masked there,
// so a streamed body is copied once less (ReverseProxy reads with 64 KiB
// buffers). Smaller reads go through a buffer of the reader's own
// (readChunk plus the longest form, pooled), so a caller reading a few
// bytes at a time does not cost a source read and a scan per call.
const directMin = 4 << 10

// reader redacts forms from a stream. It works in a window w: the caller's
// buffer for large reads, else its own buffer (buf). Each step puts the
// held bytes at the front of w, reads the source after them, masks what can
// be sent and keeps the rest, which could be the start of a form, in hold
// (at most the longest form minus one byte). The first pending bytes of hold
// belong to an occurrence that started in bytes already sent and are masked
// when sent.
type reader struct {
	s       *Scrubber
	src     io.ReadCloser
	hold    []byte
	pending int
	buf     []byte // small reads only: buf[rpos:ready] is masked, not yet returned
	rpos    int
	ready   int
	err     error // from src, returned once everything before it was
	ivs     []interval
}

func (r *reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r.rpos < r.ready {
		k := copy(p, r.buf[r.rpos:r.ready])
		r.rpos += k
		return k, nil
	}
	if r.err != nil {
		return r.drained()
	}
	if len(p) >= max(directMin, 2*r.s.maxLen) {
		// at most readChunk new bytes, as through buf: downstream writes
		// stay about two TLS records whatever the caller's buffer
		n, err := r.step(p[:min(len(p), len(r.hold)+readChunk)])
		if n == 0 && err == nil {
			return r.drained()
		}
		return n, err
	}
	if r.buf == nil {
		r.buf = getBuf(readChunk + r.s.maxLen)
	}
	n, err := r.step(r.buf)
	if n == 0 {
		if err != nil {
			return 0, err
		}
		return r.drained()
	}
	r.rpos, r.ready = copy(p, r.buf[:n]), n
	return r.rpos, nil
}

// drained returns the source's error once every byte before it was
// returned, and gives the buffer back (only Read touches it).
func (r *reader) drained() (int, error) {
	if r.buf != nil {
		putBuf(r.buf)
		r.buf = nil
	}
	return 0, r.err
}

// step fills w with the held bytes and what the source gives, until some of
// it can be sent or the source ends or fails, and returns how much of w is
// masked and ready. When the source ended or failed, its error is kept in
// r.err for the Read after the ready bytes (so step returns 0, nil only with
// r.err set). When the source keeps returning nothing, step returns
// io.ErrNoProgress itself and keeps the held bytes for a later Read. Held
// and dropped bytes are cleared from w: it may be a pooled buffer of the
// caller's that outlives the request.
func (r *reader) step(w []byte) (int, error) {
	n := copy(w, r.hold)
	for empty := 0; ; {
		m, err := r.src.Read(w[n:])
		n += m
		switch {
		case err == io.EOF:
			r.hold = r.hold[:0]
			r.err = io.EOF
			return r.window(w[:n], true), nil
		case err != nil:
			// The stream is broken: send what is safe and drop the held
			// tail, which may be the start of a secret.
			r.hold = r.hold[:0]
			r.err = err
			safe := r.window(w[:n], false)
			clear(w[safe:n])
			return safe, nil
		case m == 0:
			if empty++; empty >= maxEmptyReads {
				r.keep(w[:n])
				clear(w[:n])
				return 0, io.ErrNoProgress
			}
		default:
			empty = 0
			if safe := r.window(w[:n], false); safe > 0 {
				r.keep(w[safe:n])
				clear(w[safe:n])
				return safe, nil
			}
			// everything is held: the next bytes decide; window
			// is called again over the same start (its contract)
		}
	}
}

// keep saves held bytes for the next step.
func (r *reader) keep(b []byte) {
	if r.hold == nil && len(b) > 0 {
		r.hold = make([]byte, 0, r.s.MaxHold())
	}
	r.hold = append(r.hold[:0], b...)
}

// window masks w for sending and returns how much of it is safe.
func (r *reader) window(w []byte, final bool) int {
	var safe int
	safe, r.pending, r.ivs = r.s.window(w, final, r.pending, r.ivs[:0])
	return safe
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
