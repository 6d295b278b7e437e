package mitm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
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
		pf := startPrefetcher(t, src.r())
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
	pf := startPrefetcher(t, io.MultiReader(bytes.NewReader(want), iotest.ErrReader(cut)))
	got, err := readAllSized(pf, []int{64 << 10})
	pf.close()
	if !errors.Is(err, cut) || !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes and %v; want %d bytes and %v", len(got), err, len(want), cut)
	}
}

// slotsFree waits until no body holds one of slots: earlier tests' bodies
// given back, or this test's own.
func slotsFree(t *testing.T, slots chan struct{}) {
	t.Helper()
	waitFor(t, "read-ahead slots given back", func() bool { return len(slots) == 0 })
}

// startPrefetcher is newPrefetcher for a test, which fails if no slot is
// free.
func startPrefetcher(t *testing.T, r io.Reader) *prefetcher {
	t.Helper()
	pf := newPrefetcher(r, prefetchSlots)
	if pf == nil {
		t.Fatalf("no read-ahead slot free (%d taken)", len(prefetchSlots))
	}
	return pf
}

// within fails the test if ch does not deliver within 10 s (a liveness
// bound, not a speed check).
func within[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// A reader that panics under the goroutine (in TLS or HTTP parsing) fails
// the body instead of the process.
func TestPrefetcherTurnsAPanicIntoAnError(t *testing.T) {
	pf := startPrefetcher(t, panicReader{})
	defer pf.close()
	if n, err := pf.Read(make([]byte, 10)); n != 0 || err != errReadAheadPanic {
		t.Fatalf("%d bytes, %v; want errReadAheadPanic", n, err)
	}
}

type panicReader struct{}

func (panicReader) Read([]byte) (int, error) { panic("a reader's bug") }

// A body that failed part way says so again to a later read, rather than
// io.EOF, which would pass for its end.
func TestH1BodyRepeatsItsError(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	cut := errors.New("connection reset")
	body := &h1Body{rc: io.NopCloser(iotest.ErrReader(cut)), pc: &h1Conn{c: a}, stop: func() bool { return true }}
	for i := range 2 {
		if _, err := body.Read(make([]byte, 10)); err != cut {
			t.Fatalf("read %d: %v, want %v", i, err, cut)
		}
	}
}

// A chunk is filled while the handler is busy, and while it waits for a
// chunk begun less than prefetchLag ago; it goes early when the handler
// waits for a chunk older than that: a slow upstream's bytes reach the
// agent as they come, not a chunk late.
func TestPrefetcherChunkSizes(t *testing.T) {
	// the upstream: writes return once the prefetcher has read them, and
	// each comes a while after the last, so the chunk is old enough to go
	// early if anything waited for it
	upstream := func(t *testing.T, sizes ...int) (*io.PipeReader, <-chan error) {
		pr, pw := io.Pipe()
		t.Cleanup(func() { pr.Close() })
		sent := make(chan error, 1)
		go func() {
			for _, n := range sizes {
				time.Sleep(2 * prefetchLag)
				if _, err := pw.Write(make([]byte, n)); err != nil {
					sent <- err
					return
				}
			}
			sent <- nil
		}()
		return pr, sent
	}
	firstRead := func(pf *prefetcher) <-chan int {
		got := make(chan int, 1)
		go func() {
			n, _ := pf.Read(make([]byte, 1<<20))
			got <- n
		}()
		return got
	}
	t.Run("handler busy", func(t *testing.T) {
		pr, sent := upstream(t, 100<<10, 100<<10, 100<<10, 100<<10, 100<<10, 100<<10, 100<<10)
		pf := startPrefetcher(t, pr)
		t.Cleanup(pf.close)
		if err := within(t, sent, "the prefetcher to read 700 KiB"); err != nil {
			t.Fatal(err)
		}
		if n, err := pf.Read(make([]byte, 1<<20)); n != prefetchChunk || err != nil {
			t.Fatalf("first read: %d bytes, %v; want a whole chunk (%d)", n, err, prefetchChunk)
		}
	})
	t.Run("handler waiting, chunk young", func(t *testing.T) {
		old := prefetchLag
		prefetchLag = time.Hour // no chunk gets old enough to go early
		pr, pw := io.Pipe()
		pf := startPrefetcher(t, pr)
		prefetchLag = old // the prefetcher keeps its own copy
		t.Cleanup(pf.close)
		t.Cleanup(func() { pr.Close() })
		got := firstRead(pf)
		waitFor(t, "the handler to wait", pf.waiting.Load)
		go func() {
			if _, err := pw.Write(make([]byte, 200<<10)); err == nil {
				pw.Write(make([]byte, 400<<10))
			}
		}()
		if n := within(t, got, "the waiting handler's first read"); n != prefetchChunk {
			t.Fatalf("first read: %d bytes, want a whole chunk (%d): the chunk was young", n, prefetchChunk)
		}
	})
	t.Run("handler waiting", func(t *testing.T) {
		pr, pw := io.Pipe()
		t.Cleanup(func() { pr.Close() })
		pf := startPrefetcher(t, pr)
		t.Cleanup(pf.close)
		got := firstRead(pf)
		waitFor(t, "the handler to wait", pf.waiting.Load)
		time.Sleep(2 * pf.lag) // the chunk began before the handler waited
		if _, err := pw.Write(make([]byte, 200<<10)); err != nil {
			t.Fatal(err)
		}
		// nothing more comes: only an early hand-off answers the read
		if n := within(t, got, "the waiting handler's first read"); n != 200<<10 {
			t.Fatalf("first read: %d bytes, want the 200 KiB the upstream sent", n)
		}
	})
}

// Closing the connection stops a read in progress; close then ends the
// goroutine and gives the slot back.
func TestPrefetcherStopsWhenClosed(t *testing.T) {
	slotsFree(t, prefetchSlots)
	pr, pw := io.Pipe()
	pf := startPrefetcher(t, pr)
	if _, err := pw.Write(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	pr.CloseWithError(io.ErrClosedPipe) // as finish closes the connection
	pf.close()
	within(t, pf.done, "the prefetcher's goroutine to end")
	if n := len(prefetchSlots); n != 0 {
		t.Fatalf("%d slots taken after close, want 0", n)
	}
	pf.close() // twice is harmless
	(*prefetcher)(nil).close()
}

// A handler that stops reading (an agent gone) while the goroutine waits
// for a chunk back: close ends the goroutine all the same.
func TestPrefetcherStopsWhenIdle(t *testing.T) {
	pf := startPrefetcher(t, bytes.NewReader(make([]byte, 3*prefetchChunk)))
	waitFor(t, "both chunks read", func() bool { return len(pf.full) == 2 })
	pf.close()
	within(t, pf.done, "the prefetcher's goroutine to end")
}

// At most prefetchMax bodies are read ahead at once; the next is read by
// its handler (newPrefetcher returns nil) until a slot is given back.
func TestPrefetcherSlots(t *testing.T) {
	slotsFree(t, prefetchSlots)
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
		pf := newPrefetcher(pr, prefetchSlots)
		if pf == nil {
			t.Fatalf("no slot with %d of %d taken", len(prefetchSlots), prefetchMax)
		}
		open, pipes = append(open, pf), append(pipes, pr)
	}
	if newPrefetcher(bytes.NewReader(nil), prefetchSlots) != nil {
		t.Fatal("a prefetcher past prefetchMax")
	}
	pipes[0].Close()
	open[0].close()
	pf := newPrefetcher(bytes.NewReader(nil), prefetchSlots)
	if pf == nil {
		t.Fatal("no slot after one was given back")
	}
	pf.close()
}

// A large body of known length is read ahead of the handler (prefetcher):
// the credential is scrubbed where it straddles the hand-offs (64 KiB copy
// buffers, 512 KiB chunks), every other byte arrives as sent, the
// connection is pooled for the next request, and an agent that leaves part
// way gives the slot and the connection back.
func TestLargeBodyReadAhead(t *testing.T) {
	e := newEnv(t)
	slotsFree(t, prefetchSlots)
	size := 3<<20 + 777
	body := patterned(size)
	at := []int{64<<10 - 5, 128<<10 - 9, prefetchChunk - 13, 2*prefetchChunk - 1, 1 << 20, size - len(sentinel)}
	for _, i := range at {
		copy(body[i:], sentinel)
	}
	up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/endless" { // more than every buffer on the way holds
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", 1<<40)
				for {
					if _, err := c.Write(body); err != nil {
						return
					}
				}
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", size)
			for rest := body; len(rest) > 0; { // in uneven writes, as a busy upstream sends
				k := min(len(rest), 100<<10+3)
				if _, err := c.Write(rest[:k]); err != nil {
					return
				}
				rest = rest[k:]
			}
		}
	})
	c := e.proxyClient(agentToken, false)
	for range 2 {
		code, got := e.getVia(t, c, up.port, "/big")
		if code != 200 || len(got) != size {
			t.Fatalf("%d, %d bytes; want 200 and %d", code, len(got), size)
		}
		if strings.Contains(got, sentinel) {
			t.Fatal("the credential reached the agent")
		}
		masked := []byte(got)
		for _, i := range at {
			copy(masked[i:], body[i:i+len(sentinel)])
		}
		if !bytes.Equal(masked, body) {
			t.Fatal("bytes other than the credential changed on the way")
		}
	}
	if n := up.conns.Load(); n != 1 {
		t.Fatalf("%d upstream connections for 2 sequential downloads, want 1 (pooled)", n)
	}
	resp, err := c.Get(fmt.Sprintf("https://api.example.test:%d/endless", up.port))
	if err != nil {
		t.Fatal(err)
	}
	io.CopyN(io.Discard, resp.Body, 1<<20)
	if n := len(prefetchSlots); n != 1 {
		t.Fatalf("%d bodies read ahead during a large download, want 1", n)
	}
	resp.Body.Close()
	slotsFree(t, prefetchSlots)
}

// With every read-ahead slot taken (prefetchMax large bodies in flight),
// large downloads are read in their handlers, concurrently, and arrive
// whole; the slots are left as they were.
func TestLargeDownloadsWithoutASlot(t *testing.T) {
	e := newEnv(t)
	slotsFree(t, prefetchSlots)
	for range prefetchMax {
		prefetchSlots <- struct{}{}
	}
	defer func() {
		for range prefetchMax {
			<-prefetchSlots
		}
	}()
	const size = 3 << 20
	want := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	c := e.proxyClient(agentToken, false)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get(e.url("api.example.test", fmt.Sprintf("/bytes?n=%d", size)))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(got, want) {
				errs <- fmt.Errorf("%d bytes (want %d), same=%v, %v", len(got), size, bytes.Equal(got, want), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(prefetchSlots); n != prefetchMax {
		t.Fatalf("%d slots taken, want the %d the test holds", n, prefetchMax)
	}
}
