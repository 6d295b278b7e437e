package mitm

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// A prefetcher reads a large upstream body one stage ahead of the handler:
// its goroutine reads and decrypts the next chunk from the upstream while
// the handler scrubs, encrypts and writes the last one to the agent.
//
// Why: a download through the broker costs about twice the CPU per byte of
// either end (two AES-GCM passes, a socket each way), so the broker's one
// goroutine is the pipeline's bottleneck, and on a small box it spends much
// of its time waiting for a CPU while the other one idles (client, upstream
// and broker on two vCPUs). Two stages let the scheduler put the broker on
// both. Measured on the 2-vCPU VM (stream_64MiB alone, 6 alternating runs
// each): 726-769 MiB/s through the broker against 644-696 without, ratio
// 0.505-0.574 against 0.446-0.484, for about 3% more broker CPU per byte
// (one more copy, a hand-off per chunk).
//
// A hand-off wakes the other goroutine, which on a VM costs tens of
// microseconds, so chunks are large (prefetchChunk): an earlier prototype
// handing off every 64 KiB cost more CPU than it saved, and one handing off
// at 128 KiB whenever the handler waited gained half as much as full
// chunks. A chunk goes early only when the handler is waiting and the chunk
// has been filling for prefetchLag (a busy upstream fills one in about
// 0.4 ms), at the next read from the upstream that returns: a slow
// upstream's bytes reach the agent as they keep coming. An upstream that
// stops part way (a body of known length that stalls) can leave up to one
// chunk in the broker until it goes on or the body ends, where reading in
// the handler left up to one copy buffer (64 KiB).
//
// Uploads are read ahead the same way, from the agent (readAheadUpload),
// at most uploadMax at once, from a budget of their own.
//
// Only bodies of known length over fillAbove are read ahead (a smaller or
// open-ended one, such as a stream of events, is passed on as it comes),
// and at most prefetchMax at once: each holds two chunks (1 MiB), and with
// that many large bodies in flight every CPU is busy anyway. Past that,
// bodies are read in the handler, as before. (A slot is given back when
// the body is done with, before its goroutine has quite returned.)
type prefetcher struct {
	full    chan prefetched // read chunks, in order; never more than two
	free    chan *[]byte    // chunks the handler is done with
	quit    chan struct{}   // closed by close
	done    chan struct{}   // closed when the goroutine returns
	waiting atomic.Bool     // the handler is blocked on full
	lag     time.Duration   // prefetchLag when made
	slots   chan struct{}   // the budget this one counts against
	abort   <-chan struct{} // when closed, a Read waiting for a chunk returns (nil: never)

	// the handler's side
	cur  []byte    // unread part of held
	held *[]byte   // the chunk being handed out
	err  error     // what the reader returned after cur's bytes
	once sync.Once // close
}

type prefetched struct {
	buf *[]byte
	n   int
	err error
}

const (
	prefetchChunk = 512 << 10
	prefetchMax   = 16
	uploadMax     = 8
)

var (
	prefetchLag   = time.Millisecond // a variable for tests; each prefetcher keeps its own copy
	prefetchSlots = make(chan struct{}, prefetchMax)
	// uploadSlots is the uploads' own budget: an agent that declares a
	// large body and stalls holds its slot, and must not take downloads'.
	uploadSlots    = make(chan struct{}, uploadMax)
	prefetchChunks = sync.Pool{New: func() any { b := make([]byte, prefetchChunk); return &b }}
)

// newPrefetcher starts reading r ahead, or returns nil when slots (the
// downloads' prefetchSlots or uploadSlots) has none free. The caller
// reads through Read and calls close when done; r must fail once its
// connection is closed, which is what stops a read in progress. Read and close are the handler's, one
// at a time (h1Body's Read and Close never run concurrently; an upload,
// which net/http's Transport may close from one goroutine while another
// reads it, takes turns under readAheadUpload's lock).
func newPrefetcher(r io.Reader, slots chan struct{}) *prefetcher {
	select {
	case slots <- struct{}{}:
	default:
		return nil
	}
	pf := &prefetcher{full: make(chan prefetched, 2), free: make(chan *[]byte, 2), quit: make(chan struct{}), done: make(chan struct{}), lag: prefetchLag, slots: slots}
	pf.free <- prefetchChunks.Get().(*[]byte)
	pf.free <- prefetchChunks.Get().(*[]byte)
	go pf.run(r)
	return pf
}

// run fills chunks until r fails or ends. Two chunks exist, so sending on
// full never blocks.
func (pf *prefetcher) run(r io.Reader) {
	defer close(pf.done)
	for {
		var buf *[]byte
		select {
		case buf = <-pf.free:
		case <-pf.quit:
			return
		}
		n, err := pf.fill(r, *buf)
		pf.full <- prefetched{buf, n, err}
		if err != nil {
			return
		}
	}
}

// fill reads one chunk, handing it over early (and clearing waiting, so
// the next chunk is not cut short too) when the handler waits and the
// chunk is prefetchLag old. A panic under it (in the TLS or HTTP reader)
// becomes the chunk's error: the handler, where the read used to happen,
// recovers panics, and this goroutine would otherwise take the process
// down.
func (pf *prefetcher) fill(r io.Reader, buf []byte) (n int, err error) {
	defer func() {
		if recover() != nil {
			n, err = 0, errReadAheadPanic
		}
	}()
	start := time.Now()
	return readUntil(r, buf, func(n int) bool {
		return n > 0 && pf.waiting.Load() && time.Since(start) >= pf.lag && pf.waiting.CompareAndSwap(true, false)
	})
}

var (
	errReadAheadPanic   = errors.New("reading a body ahead failed (panic)")
	errReadAheadAborted = errors.New("the body was closed while read ahead")
)

func (pf *prefetcher) Read(p []byte) (int, error) {
	for len(pf.cur) == 0 {
		if pf.err != nil {
			return 0, pf.err
		}
		if pf.held != nil {
			pf.free <- pf.held
			pf.held = nil
		}
		var c prefetched
		select {
		case c = <-pf.full:
		default:
			pf.waiting.Store(true)
			select {
			case c = <-pf.full:
			case <-pf.abort:
				pf.waiting.Store(false)
				return 0, errReadAheadAborted
			}
			pf.waiting.Store(false)
		}
		pf.held, pf.cur, pf.err = c.buf, (*c.buf)[:c.n], c.err
	}
	n := copy(p, pf.cur)
	pf.cur = pf.cur[n:]
	if len(pf.cur) == 0 && pf.err != nil {
		return n, pf.err
	}
	return n, nil
}

// close stops the goroutine (after its read in progress fails, once the
// caller has closed the connection) and gives back the slot and the chunks
// it can reach; a chunk the goroutine still holds is left to the collector.
func (pf *prefetcher) close() {
	if pf == nil {
		return
	}
	pf.once.Do(func() {
		close(pf.quit)
		if pf.held != nil {
			prefetchChunks.Put(pf.held)
			pf.held, pf.cur = nil, nil
		}
		for {
			select {
			case c := <-pf.full:
				prefetchChunks.Put(c.buf)
				continue
			case b := <-pf.free:
				prefetchChunks.Put(b)
				continue
			default:
			}
			break
		}
		<-pf.slots
	})
}
