package scrub

import (
	"bytes"
	"io"
	"testing"
	"testing/iotest"
)

// TestHeldTailBounded checks after every Read that the reader holds at most
// the longest form minus one byte, for small reads (through its own buffer,
// which must never grow and goes back to the pool once the stream is
// drained) and large ones (in the caller's buffer, taking none), and that
// the stream is the whole-buffer redaction also when the two alternate.
func TestHeldTailBounded(t *testing.T) {
	secret := []byte("tok_SENTINEL_abcdefghijklmnop")
	s := New(Forms([][]byte{secret}))
	var in []byte
	for i := range 2000 {
		in = append(in, "some text "...)
		in = append(in, secret[:i%len(secret)]...) // many partial starts
		if i%7 == 0 {
			in = append(in, secret...)
		}
	}
	for _, sizes := range [][]int{{777}, {40 << 10}, {777, 40 << 10, 100, directMin, 1}} {
		size := sizes[0]
		mixed := len(sizes) > 1
		direct := size >= max(directMin, 2*s.maxLen)
		r := s.Reader(io.NopCloser(iotest.HalfReader(bytes.NewReader(in)))).(*reader)
		if r.buf != nil {
			t.Fatal("buffer taken before the first Read")
		}
		bufLen, capa := readChunk+s.maxLen, -1
		p := make([]byte, size)
		var out []byte
		for i := 0; ; i++ {
			if mixed {
				p = make([]byte, sizes[i%len(sizes)])
			}
			n, err := r.Read(p)
			out = append(out, p[:n]...)
			if held := cap(r.hold); held > s.MaxHold() {
				t.Fatalf("reads of %v: room for %d held bytes, bound is %d", sizes, held, s.MaxHold())
			}
			if err == io.EOF {
				if r.buf != nil {
					t.Fatal("buffer kept after the end of the stream")
				}
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if mixed {
				continue
			}
			if direct {
				if r.buf != nil {
					t.Fatalf("reads of %d took a buffer", size)
				}
				continue
			}
			if capa < 0 {
				capa = cap(r.buf)
			}
			if len(r.buf) != bufLen || cap(r.buf) != capa {
				t.Fatal("buffer grew")
			}
		}
		want := bytes.Clone(in)
		s.Redact(want)
		if !bytes.Equal(out, want) {
			t.Fatalf("reads of %v: the stream differs from the whole-buffer redaction", sizes)
		}
	}
}
