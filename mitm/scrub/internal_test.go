package scrub

import (
	"bytes"
	"io"
	"testing"
	"testing/iotest"
)

// TestHeldTailBounded checks after every Read that the reader holds at most
// the longest form minus one byte and never grows its buffer, and that the
// buffer goes back to the pool once the stream is drained.
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
	r := s.Reader(io.NopCloser(iotest.HalfReader(bytes.NewReader(in)))).(*reader)
	if r.buf != nil {
		t.Fatal("buffer taken before the first Read")
	}
	size, capa := readChunk+s.maxLen, -1
	p := make([]byte, 777)
	total := 0
	for {
		n, err := r.Read(p)
		total += n
		if held := r.n - r.safe; held > s.MaxHold() {
			t.Fatalf("holds %d bytes, bound is %d", held, s.MaxHold())
		}
		if err == io.EOF {
			if r.buf != nil {
				t.Fatal("buffer kept after the end of the stream")
			}
			break
		}
		if capa < 0 {
			capa = cap(r.buf)
		}
		if len(r.buf) != size || cap(r.buf) != capa {
			t.Fatal("buffer grew")
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if total != len(in) {
		t.Fatalf("read %d of %d bytes", total, len(in))
	}
}
