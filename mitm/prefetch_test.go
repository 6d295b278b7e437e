package mitm

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"
	"time"
)

// patterned is n bytes no two chunks of which look alike, so a chunk
// handed out twice or out of order shows.
func patterned(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// readAllSized reads pf to its end with reads of the given sizes in turn.
func readAllSized(pf *prefetcher, sizes []int) ([]byte, error) {
	var out []byte
	for i := 0; ; i++ {
		p := make([]byte, sizes[i%len(sizes)])
		n, err := pf.Read(p)
		out = append(out, p[:n]...)
		if err != nil {
			return out, err
		}
	}
}

// Every byte comes out once and in order, whatever sizes the source
// returns and the handler asks for, and the source's io.EOF comes last.
func TestPrefetcherPassesEveryByteInOrder(t *testing.T) {
	want := patterned(3*prefetchChunk + 12345)
	for _, src := range []struct {
		name string
		r    func() io.Reader
	}{
		{"whole", func() io.Reader { return bytes.NewReader(want) }},
		{"halves", func() io.Reader { return iotest.HalfReader(bytes.NewReader(want)) }},
		{"records", func() io.Reader { return &smallReads{r: bytes.NewReader(want), max: 16 << 10} }},
	} {
		pf := newPrefetcher(src.r())
		if pf == nil {
			t.Fatal("no prefetch slot free")
		}
		got, err := readAllSized(pf, []int{1, 7, 64 << 10, 1 << 20, 32<<10 + 5})
		pf.close()
		if err != io.EOF {
			t.Fatalf("%s: ended with %v, want io.EOF", src.name, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: %d bytes out of %d in, not the same", src.name, len(got), len(want))
		}
	}
}

// smallReads returns at most max bytes per read, as a TLS connection
// returns one record.
type smallReads struct {
	r   io.Reader
	max int
}

func (s *smallReads) Read(p []byte) (int, error) { return s.r.Read(p[:min(len(p), s.max)]) }

// An upstream that fails part way: the bytes before the failure, then its
// error as it is.
func TestPrefetcherPassesTheSourcesError(t *testing.T) {
	cut := errors.New("connection reset")
	want := patterned(700 << 10)
	pf := newPrefetcher(io.MultiReader(bytes.NewReader(want), iotest.ErrReader(cut)))
	got, err := readAllSized(pf, []int{64 << 10})
	pf.close()
	if !errors.Is(err, cut) || !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes and %v; want %d bytes and %v", len(got), err, len(want), cut)
	}
}

// A chunk is filled while the handler is busy, but goes early when the
// handler waits for it and the chunk has been filling for prefetchLag: a
// slow upstream's bytes reach the agent as they come, not a chunk late.
func TestPrefetcherChunkSizes(t *testing.T) {
	t.Run("handler busy", func(t *testing.T) {
		pr, pw := io.Pipe()
		pf := newPrefetcher(pr)
		defer pf.close()
		defer pr.Close()
		// every write returns once the prefetcher has read it: 700 KiB
		// read before the handler asks for anything
		for range 7 {
			if _, err := pw.Write(make([]byte, 100<<10)); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := pf.Read(make([]byte, 1<<20)); n != prefetchChunk || err != nil {
			t.Fatalf("first read: %d bytes, %v; want a whole chunk (%d)", n, err, prefetchChunk)
		}
	})
	t.Run("handler waiting", func(t *testing.T) {
		pr, pw := io.Pipe()
		pf := newPrefetcher(pr)
		defer pf.close()
		defer pr.Close()
		got := make(chan int, 1)
		go func() {
			n, _ := pf.Read(make([]byte, 1<<20))
			got <- n
		}()
		waitFor(t, "the handler to wait", pf.waiting.Load)
		time.Sleep(2 * prefetchLag) // the chunk began before the handler waited
		if _, err := pw.Write(make([]byte, 200<<10)); err != nil {
			t.Fatal(err)
		}
		// nothing more comes: only an early hand-off answers the read
		select {
		case n := <-got:
			if n != 200<<10 {
				t.Fatalf("first read: %d bytes, want the 200 KiB the upstream sent", n)
			}
		case <-time.After(10 * time.Second): // a liveness bound
			t.Fatal("the waiting handler got nothing of the 200 KiB read")
		}
	})
}

// Closing the connection stops a read in progress; close then ends the
// goroutine and gives the slot back.
func TestPrefetcherStopsWhenClosed(t *testing.T) {
	waitFor(t, "earlier tests' slots", func() bool { return len(prefetchSlots) == 0 })
	pr, pw := io.Pipe()
	pf := newPrefetcher(pr)
	if _, err := pw.Write(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	pr.CloseWithError(io.ErrClosedPipe) // as finish closes the connection
	pf.close()
	select {
	case <-pf.done:
	case <-time.After(10 * time.Second): // a liveness bound
		t.Fatal("the prefetcher's goroutine did not end")
	}
	if n := len(prefetchSlots); n != 0 {
		t.Fatalf("%d slots taken after close, want 0", n)
	}
	pf.close() // twice is harmless
	(*prefetcher)(nil).close()
}

// At most prefetchMax bodies are read ahead at once; the next is read by
// its handler (newPrefetcher returns nil) until a slot is given back.
func TestPrefetcherSlots(t *testing.T) {
	waitFor(t, "earlier tests' slots", func() bool { return len(prefetchSlots) == 0 })
	var open []*prefetcher
	var pipes []*io.PipeReader
	defer func() {
		for i, pf := range open {
			pipes[i].Close()
			pf.close()
		}
	}()
	for len(prefetchSlots) < prefetchMax {
		pr, _ := io.Pipe()
		pf := newPrefetcher(pr)
		if pf == nil {
			t.Fatalf("no slot with %d of %d taken", len(prefetchSlots), prefetchMax)
		}
		open, pipes = append(open, pf), append(pipes, pr)
	}
	if newPrefetcher(bytes.NewReader(nil)) != nil {
		t.Fatal("a prefetcher past prefetchMax")
	}
	pipes[0].Close()
	open[0].close()
	pf := newPrefetcher(bytes.NewReader(nil))
	if pf == nil {
		t.Fatal("no slot after one was given back")
	}
	pf.close()
}
