package scrub

import (
	"bytes"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
)

// Scrubber is a compiled set of forms. It is immutable and safe for
// concurrent use; compile once per request and use it for the headers and
// the body.
type Scrubber struct {
	forms  [][]byte
	maxLen int
	groups []group   // one per distinct anchor byte
	first  [4]uint64 // bitmap of the forms' first bytes (for the tail check)
}

// group is every form anchored at one byte value.
type group struct {
	anchor  byte
	next    [4]uint64 // bitmap of the bytes that follow the anchor in pats
	anyNext bool      // some form ends with its anchor: the filter cannot apply
	pats    []anchored
}

type anchored struct {
	form []byte
	off  int // position of the anchor byte in form
}

// New compiles forms (typically the result of Forms). Empty forms are
// ignored; the slices are not retained.
func New(forms [][]byte) *Scrubber {
	s := &Scrubber{forms: make([][]byte, 0, len(forms))}
	size := 0
	for _, f := range forms {
		size += len(f)
	}
	arena := make([]byte, 0, size) // one allocation for every form's copy
	for _, f := range forms {
		if len(f) == 0 || slices.ContainsFunc(s.forms, func(g []byte) bool { return bytes.Equal(f, g) }) {
			continue
		}
		arena = append(arena, f...)
		s.forms = append(s.forms, arena[len(arena)-len(f):len(arena):len(arena)])
		s.maxLen = max(s.maxLen, len(f))
	}
	for _, f := range s.forms {
		s.first[f[0]>>6] |= 1 << (f[0] & 63)
	}
	s.groups = planAnchors(s.forms)
	return s
}

// planAnchors groups the forms by anchor byte so that few, rare bytes cover
// them all: a greedy weighted set cover where a byte's weight is the cost of
// one IndexByte pass for it. Each pass costs about the same whatever it
// finds, so one byte shared by several forms beats a slightly rarer byte
// each.
func planAnchors(forms [][]byte) []group {
	var groups []group
	left := make([]bool, len(forms))
	for i := range left {
		left[i] = true
	}
	for remaining := len(forms); remaining > 0; {
		var count [256]int
		for i, f := range forms {
			if !left[i] {
				continue
			}
			var seen [4]uint64
			for _, c := range f {
				if seen[c>>6]&(1<<(c&63)) == 0 {
					seen[c>>6] |= 1 << (c & 63)
					count[c]++
				}
			}
		}
		best, bestScore := 0, math.Inf(1)
		for c := range 256 {
			if count[c] > 0 {
				if score := byteCost[c] / float64(count[c]); score < bestScore {
					best, bestScore = c, score
				}
			}
		}
		g := group{anchor: byte(best)}
		for i, f := range forms {
			if !left[i] || bytes.IndexByte(f, g.anchor) < 0 {
				continue
			}
			left[i] = false
			remaining--
			off := anchorOffset(f, g.anchor)
			g.pats = append(g.pats, anchored{form: f, off: off})
			if off+1 < len(f) {
				g.next[f[off+1]>>6] |= 1 << (f[off+1] & 63)
			} else {
				g.anyNext = true
			}
		}
		groups = append(groups, g)
	}
	return groups
}

// anchorOffset picks, among the positions of c in f, the one followed by the
// rarest byte, so the next-byte filter rejects the most false candidates.
func anchorOffset(f []byte, c byte) int {
	best, bestCost := -1, math.Inf(1)
	for i, b := range f {
		if b != c {
			continue
		}
		cost := math.Inf(1) // anchor at the end: no next byte to filter on
		if i+1 < len(f) {
			cost = byteCost[f[i+1]]
		}
		if best < 0 || cost < bestCost {
			best, bestCost = i, cost
		}
	}
	return best
}

// Empty reports whether there is nothing to scrub.
func (s *Scrubber) Empty() bool { return len(s.forms) == 0 }

// MaxHold is the most bytes a Reader holds back: the longest form minus one.
func (s *Scrubber) MaxHold() int { return max(s.maxLen-1, 0) }

// Redact overwrites every occurrence of a form in b with a marker of the
// same length and returns how many occurrences it found.
func (s *Scrubber) Redact(b []byte) int {
	var ivs []interval
	ivs = s.find(b, len(b), ivs)
	n := len(ivs)
	maskIntervals(b, ivs, len(b))
	return n
}

func (s *Scrubber) containsString(v string) bool {
	for _, g := range s.groups {
		for i := 0; ; {
			j := strings.IndexByte(v[i:], g.anchor)
			if j < 0 {
				break
			}
			p := i + j
			for _, pt := range g.pats {
				if st := p - pt.off; st >= 0 && st+len(pt.form) <= len(v) && v[st:st+len(pt.form)] == string(pt.form) {
					return true
				}
			}
			i = p + 1
		}
	}
	return false
}

// Header redacts every form from h's values, and renames a key holding one
// to its redacted spelling.
func (s *Scrubber) Header(h http.Header) {
	if s.Empty() {
		return
	}
	for k, vs := range h {
		for i, v := range vs {
			if s.containsString(v) {
				b := []byte(v)
				s.Redact(b)
				vs[i] = string(b)
			}
		}
		if s.containsString(k) {
			b := []byte(k)
			s.Redact(b)
			delete(h, k)
			h[string(b)] = append(h[string(b)], vs...)
		}
	}
}

// Reader returns a ReadCloser streaming r with every form redacted; Close
// closes r. With no forms it returns r itself.
func (s *Scrubber) Reader(r io.ReadCloser) io.ReadCloser {
	if s.Empty() {
		return r
	}
	return &reader{s: s, src: r}
}

// Reader returns r with every form redacted, as New(forms).Reader(r).
func Reader(r io.ReadCloser, forms [][]byte) io.ReadCloser { return New(forms).Reader(r) }

// Header redacts every form from h, as New(forms).Header(h). Removing
// Alt-Svc is the caller's business.
func Header(h http.Header, forms [][]byte) { New(forms).Header(h) }

// interval is a half-open byte range [lo, hi) to mask.
type interval struct{ lo, hi int }

// find appends every occurrence of a form in w that starts before end, as
// intervals sorted by start and merged where they overlap or touch.
func (s *Scrubber) find(w []byte, end int, ivs []interval) []interval {
	start := len(ivs)
	for gi := range s.groups {
		g := &s.groups[gi]
		for i := 0; i < len(w); {
			j := bytes.IndexByte(w[i:], g.anchor)
			if j < 0 {
				break
			}
			p := i + j
			i = p + 1
			if !g.anyNext && p+1 < len(w) && g.next[w[p+1]>>6]&(1<<(w[p+1]&63)) == 0 {
				continue
			}
			for _, pt := range g.pats {
				st := p - pt.off
				if st >= 0 && st < end && st+len(pt.form) <= len(w) && bytes.Equal(w[st:st+len(pt.form)], pt.form) {
					ivs = append(ivs, interval{st, st + len(pt.form)})
				}
			}
		}
	}
	return mergeIntervals(ivs, start)
}

// mergeIntervals sorts ivs[start:] and merges overlapping or adjacent ones.
func mergeIntervals(ivs []interval, start int) []interval {
	tail := ivs[start:]
	if len(tail) < 2 {
		return ivs
	}
	slices.SortFunc(tail, func(a, b interval) int { return a.lo - b.lo })
	out := tail[:1]
	for _, iv := range tail[1:] {
		last := &out[len(out)-1]
		if iv.lo <= last.hi {
			last.hi = max(last.hi, iv.hi)
			continue
		}
		out = append(out, iv)
	}
	return ivs[:start+len(out)]
}

// maskIntervals writes markers over ivs, cut at end.
func maskIntervals(b []byte, ivs []interval, end int) {
	for _, iv := range ivs {
		if iv.lo >= end {
			break
		}
		writeMarker(b[iv.lo:min(iv.hi, end)])
	}
}

const markerWord = "[REDACTED]"

// writeMarker overwrites dst with the marker of its length: "[REDACTED]"
// padded with '*' before the closing bracket when longer, '*' only when
// shorter than ten bytes.
func writeMarker(dst []byte) {
	if len(dst) < len(markerWord) {
		for i := range dst {
			dst[i] = '*'
		}
		return
	}
	n := copy(dst, markerWord[:len(markerWord)-1])
	for i := n; i < len(dst)-1; i++ {
		dst[i] = '*'
	}
	dst[len(dst)-1] = ']'
}

// Marker returns the marker that replaces an occurrence of n bytes.
func Marker(n int) []byte {
	b := make([]byte, n)
	writeMarker(b)
	return b
}
