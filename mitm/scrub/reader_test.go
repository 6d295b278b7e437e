package scrub_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/agentvault/agent-vault/mitm/scrub"
)

// chunks is a source returning one chunk per Read.
type chunks struct {
	parts  [][]byte
	err    error // returned after the last part (io.EOF when nil)
	closed bool
}

func (c *chunks) Read(p []byte) (int, error) {
	for len(c.parts) > 0 && len(c.parts[0]) == 0 {
		c.parts = c.parts[1:]
	}
	if len(c.parts) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		return 0, io.EOF
	}
	n := copy(p, c.parts[0])
	c.parts[0] = c.parts[0][n:]
	return n, nil
}

func (c *chunks) Close() error { c.closed = true; return nil }

func split(b []byte, at ...int) [][]byte {
	var out [][]byte
	prev := 0
	for _, a := range at {
		out = append(out, b[prev:a])
		prev = a
	}
	return append(out, b[prev:])
}

func readAll(t *testing.T, r io.Reader) []byte {
	t.Helper()
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return out
}

// readSizes are the caller's buffer sizes the reader tests read with: a
// small read goes through the reader's own buffer, a large one (the broker's
// are 64 KiB) is masked in place.
var readSizes = []int{512, 64 << 10}

// readSized reads r to its end with reads of size bytes.
func readSized(r io.Reader, size int) ([]byte, error) {
	buf := make([]byte, size)
	var out []byte
	for range 1 << 20 {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
	return out, errors.New("no end after a million reads")
}

func readAllWith(t *testing.T, r io.Reader, size int) []byte {
	t.Helper()
	out, err := readSized(r, size)
	if err != nil {
		t.Fatalf("read with %d-byte reads: %v", size, err)
	}
	return out
}

// expect is the whole-buffer redaction of in.
func expect(s *scrub.Scrubber, in []byte) []byte {
	out := bytes.Clone(in)
	s.Redact(out)
	return out
}

func TestReaderEverySplit(t *testing.T) {
	forms := scrub.Forms([][]byte{plainSecret})
	s := scrub.New(forms)
	in := []byte("HTTP echo: {\"auth\":\"Bearer " + string(plainSecret) + "\",\"again\":\"" + string(plainSecret) + "x\"}")
	want := expect(s, in)
	if bytes.Contains(want, plainSecret) || !bytes.Contains(want, scrub.Marker(len(plainSecret))) {
		t.Fatalf("whole-buffer redaction wrong: %q", want)
	}
	if len(want) != len(in) {
		t.Fatal("length changed")
	}
	lo, hi := 20, 20+2*len(plainSecret) // splits around the first occurrence
	for _, size := range readSizes {
		for i := lo; i <= hi; i++ {
			got := readAllWith(t, s.Reader(&chunks{parts: split(bytes.Clone(in), i)}), size)
			if !bytes.Equal(got, want) {
				t.Fatalf("reads of %d, split at %d: %q", size, i, got)
			}
			for j := i; j <= hi; j++ {
				got := readAllWith(t, s.Reader(&chunks{parts: split(bytes.Clone(in), i, j)}), size)
				if !bytes.Equal(got, want) {
					t.Fatalf("reads of %d, split at %d, %d: %q", size, i, j, got)
				}
			}
		}
		for name, wrap := range map[string]func(io.Reader) io.Reader{
			"one byte":   iotest.OneByteReader,
			"half":       iotest.HalfReader,
			"data+error": iotest.DataErrReader,
		} {
			got := readAllWith(t, s.Reader(io.NopCloser(wrap(bytes.NewReader(in)))), size)
			if !bytes.Equal(got, want) {
				t.Errorf("reads of %d, %s: %q", size, name, got)
			}
		}
	}
	if err := iotest.TestReader(s.Reader(io.NopCloser(iotest.OneByteReader(bytes.NewReader(in)))), want); err != nil {
		t.Error(err)
	}
}

func TestReaderEveryForm(t *testing.T) {
	forms := scrub.Forms(testSecrets)
	s := scrub.New(forms)
	for _, f := range forms {
		in := []byte("<" + string(f) + ">")
		want := "<" + string(scrub.Marker(len(f))) + ">"
		for i := 1; i < len(in); i++ {
			for _, size := range readSizes {
				got := readAllWith(t, s.Reader(&chunks{parts: split(bytes.Clone(in), i)}), size)
				if string(got) != want {
					t.Fatalf("form %q split at %d, reads of %d: %q, want %q", f, i, size, got, want)
				}
			}
		}
	}
}

func TestReaderOverlapAndAdjacent(t *testing.T) {
	s := scrub.New([][]byte{[]byte("abab"), []byte("SECRETX")})
	for in, want := range map[string]string{
		"ababab":               "******",
		"xabababy":             "x******y",
		"SECRETXSECRETX":       "[REDACTED****]",
		"SECRETXababSECRETX!":  "[REDACTED********]!",
		"SECRETX SECRETX":      "******* *******",
		"abaSECRETabSECRETXab": "abaSECRETab*******ab",
	} {
		if got := expect(s, []byte(in)); string(got) != want {
			t.Errorf("%q: whole buffer %q, want %q", in, got, want)
		}
		b := []byte(in)
		covered := make([]bool, len(b))
		for _, f := range []string{"abab", "SECRETX"} {
			for k := 0; k+len(f) <= len(in); k++ {
				if in[k:k+len(f)] == f {
					for c := k; c < k+len(f); c++ {
						covered[c] = true
					}
				}
			}
		}
		for i := 0; i <= len(b); i++ {
			for j := i; j <= len(b); j++ {
				for _, size := range readSizes {
					got := readAllWith(t, s.Reader(&chunks{parts: split(bytes.Clone(b), i, j)}), size)
					if len(got) != len(in) {
						t.Fatalf("%q split %d,%d, reads of %d: length %d", in, i, j, size, len(got))
					}
					if bytes.Contains(got, []byte("abab")) || bytes.Contains(got, []byte("SECRETX")) {
						t.Fatalf("%q split %d,%d, reads of %d: a form survived: %q", in, i, j, size, got)
					}
					// every byte of an occurrence is masked, and
					// outside the occurrences nothing changes
					for k := range got {
						masked := strings.IndexByte("[REDACTED]*", got[k]) >= 0
						if covered[k] && !masked {
							t.Fatalf("%q split %d,%d, reads of %d: byte %d of an occurrence sent: %q", in, i, j, size, k, got)
						}
						if !covered[k] && got[k] != in[k] {
							t.Fatalf("%q split %d,%d, reads of %d: byte %d changed: %q", in, i, j, size, k, got)
						}
					}
				}
			}
		}
	}
}

func TestReaderNoFalseRedaction(t *testing.T) {
	s := scrub.New(scrub.Forms([][]byte{plainSecret}))
	rng := rand.New(rand.NewSource(7))
	in := make([]byte, 1<<20)
	for i := range in {
		in[i] = byte(rng.Intn(256))
	}
	// near misses: every proper prefix and suffix of the secret
	for i := 1; i < len(plainSecret); i++ {
		in = append(in, plainSecret[:i]...)
		in = append(in, ' ')
		in = append(in, plainSecret[i:]...)
		in = append(in, '\n')
	}
	in = append(in, plainSecret[:len(plainSecret)-1]...) // a truncated echo at the end
	got := readAll(t, s.Reader(io.NopCloser(iotest.HalfReader(bytes.NewReader(in)))))
	if !bytes.Equal(got, in) {
		t.Error("bytes changed although no form occurs")
	}
}

// TestReaderPrompt checks that a Read returns what arrived without waiting
// for more, holding back only a possible start of a form.
func TestReaderPrompt(t *testing.T) {
	s := scrub.New(scrub.Forms([][]byte{plainSecret}))
	pr, pw := io.Pipe()
	r := s.Reader(pr)
	buf := make([]byte, 4096)
	step := func(write, wantRead string) {
		t.Helper()
		go func() { _, _ = pw.Write([]byte(write)) }()
		n, err := r.Read(buf)
		if err != nil || string(buf[:n]) != wantRead {
			t.Fatalf("after writing %q: read %q, %v; want %q", write, buf[:n], err, wantRead)
		}
	}
	step("data: {\"a\":1}\n\n", "data: {\"a\":1}\n\n")
	step("data: "+string(plainSecret[:7]), "data: ") // held: could be the secret
	// more of the secret arrives: still held, so Read waits for the rest
	go func() {
		_, _ = pw.Write(plainSecret[7:12])
		_, _ = pw.Write([]byte(string(plainSecret[12:]) + "\n\n"))
	}()
	n, err := r.Read(buf)
	if err != nil || string(buf[:n]) != string(scrub.Marker(len(plainSecret)))+"\n\n" {
		t.Fatalf("the secret in three pieces: read %q, %v", buf[:n], err)
	}
	step("data: sk_x\n\n", "data: sk_x\n\n") // a prefix that turned out not to be one
	pw.Close()
	if n, err := r.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("at the end: %d, %v", n, err)
	}
}

func TestReaderErrorsAndClose(t *testing.T) {
	s := scrub.New(scrub.Forms([][]byte{plainSecret}))
	boom := errors.New("connection reset")
	for _, size := range readSizes {
		src := &chunks{parts: [][]byte{[]byte("ok " + string(plainSecret[:10]))}, err: boom}
		r := s.Reader(src)
		got, err := readSized(r, size)
		if !errors.Is(err, boom) {
			t.Fatalf("reads of %d: error %v, want the source's", size, err)
		}
		if string(got) != "ok " {
			t.Errorf("reads of %d: got %q: the held start of a secret must be dropped on error", size, got)
		}
		if err := r.Close(); err != nil || !src.closed {
			t.Error("Close did not close the source")
		}
	}
	// no forms: the source itself comes back
	body := io.NopCloser(strings.NewReader("x"))
	if scrub.Reader(body, nil) != body {
		t.Error("Reader with no forms wraps the body")
	}
	// a source that never makes progress
	for _, size := range readSizes {
		_, err := scrub.Reader(io.NopCloser(emptyReader{}), [][]byte{plainSecret}).Read(make([]byte, size))
		if !errors.Is(err, io.ErrNoProgress) {
			t.Errorf("reads of %d, empty source: %v", size, err)
		}
	}
}

// TestReaderNoProgressKeepsHeld: a source that stalls after the start of a
// secret gets io.ErrNoProgress, and a caller that reads on afterwards still
// gets the whole occurrence masked, nothing lost.
func TestReaderNoProgressKeepsHeld(t *testing.T) {
	s := scrub.New(scrub.Forms([][]byte{plainSecret}))
	for _, size := range readSizes {
		src := &stalling{parts: [][]byte{[]byte("ok " + string(plainSecret[:10])), nil, plainSecret[10:]}}
		r := s.Reader(io.NopCloser(src))
		var out []byte
		stalls := 0
		buf := make([]byte, size)
		for range 1000 {
			n, err := r.Read(buf)
			out = append(out, buf[:n]...)
			if errors.Is(err, io.ErrNoProgress) {
				stalls++
				continue
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if want := "ok " + string(scrub.Marker(len(plainSecret))); string(out) != want || stalls != 1 {
			t.Errorf("reads of %d: %q after %d stalls, want %q after 1", size, out, stalls, want)
		}
	}
}

// stalling returns its parts in order; a nil part stands for a stall: the
// source returns nothing (without an error) 100 times, as many as the reader
// tries before it gives up (maxEmptyReads).
type stalling struct {
	parts [][]byte
	empty int
}

func (s *stalling) Read(p []byte) (int, error) {
	if len(s.parts) == 0 {
		return 0, io.EOF
	}
	if s.parts[0] == nil {
		if s.empty++; s.empty == 100 {
			s.parts = s.parts[1:]
		}
		return 0, nil
	}
	n := copy(p, s.parts[0])
	if s.parts[0] = s.parts[0][n:]; len(s.parts[0]) == 0 {
		s.parts = s.parts[1:]
	}
	return n, nil
}

type emptyReader struct{}

func (emptyReader) Read([]byte) (int, error) { return 0, nil }

// TestReaderConstantMemory streams 32 MiB with echoes at random places and
// checks the allocations stay small.
func TestReaderConstantMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 32 MiB")
	}
	s := scrub.New(scrub.Forms([][]byte{plainSecret}))
	block := make([]byte, 1<<20)
	rng := rand.New(rand.NewSource(1))
	for i := range block {
		block[i] = "abcdefghij {}\":,\n"[rng.Intn(17)]
	}
	echoes := 0
	for off := 1000; off+len(plainSecret) < len(block); off += 100_000 {
		copy(block[off:], plainSecret)
		echoes++
	}
	src := &repeatReader{block: block, left: 32 << 20}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	r := s.Reader(io.NopCloser(src))
	buf := make([]byte, 32<<10)
	total, leaks := 0, 0
	tail := make([]byte, 0, 64<<10)
	for {
		n, err := r.Read(buf)
		total += n
		chunk := append(tail, buf[:n]...)
		leaks += bytes.Count(chunk, plainSecret)
		tail = append(tail[:0], chunk[max(0, len(chunk)-len(plainSecret)+1):]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if total != 32<<20 {
		t.Errorf("read %d bytes", total)
	}
	if leaks != 0 {
		t.Errorf("%d echoes leaked", leaks)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Errorf("allocated %d bytes for a 32 MiB stream; memory must stay bounded", grew)
	}
}

// repeatReader serves left bytes of block, repeated.
type repeatReader struct {
	block []byte
	off   int
	left  int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	p = p[:min(len(p), r.left, len(r.block)-r.off)]
	n := copy(p, r.block[r.off:])
	r.off = (r.off + n) % len(r.block)
	r.left -= n
	return n, nil
}

func (r *repeatReader) Close() error { return nil }

func TestHeader(t *testing.T) {
	forms := scrub.Forms([][]byte{plainSecret, []byte("user:" + string(plainSecret))})
	h := http.Header{
		"X-Echo":                   {"Bearer " + string(plainSecret), "clean"},
		"Www-Authenticate":         {`Basic realm="` + b64("user:"+string(plainSecret)) + `"`},
		"Content-Type":             {"application/json"},
		"X-" + string(plainSecret): {"v"},
	}
	scrub.Header(h, forms)
	for k, vs := range h {
		for _, v := range vs {
			if containsForm([]byte(k+": "+v), forms) != nil {
				t.Errorf("form left in %s: %s", k, v)
			}
		}
	}
	if h.Get("X-Echo") != "Bearer "+string(scrub.Marker(len(plainSecret))) || h.Values("X-Echo")[1] != "clean" {
		t.Errorf("X-Echo = %q", h.Values("X-Echo"))
	}
	if h.Get("Content-Type") != "application/json" {
		t.Error("a clean header changed")
	}
	if len(h) != 4 || h.Get("X-"+string(scrub.Marker(len(plainSecret)))) != "v" {
		t.Errorf("a header named after the secret was not renamed: %v", h)
	}
}
