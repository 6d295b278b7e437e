package mitm

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// h1Writer is the http.ResponseWriter of serveH1 (with Flush, FlushError
// and Hijack for http.ResponseController).
type h1Writer struct {
	conn  net.Conn
	tc    *trackedConn // under conn's TLS, for corking large writes
	watch *disconnectWatch
	br    *bufio.Reader
	bw    *bufio.Writer
	req   *http.Request

	header   http.Header
	status   int
	pre      []byte // body written before the header was committed (≤ h1PreBuffer)
	sent     bool   // the header is committed to bw
	chunked  bool
	noBody   bool
	length   int64 // the declared Content-Length, or -1
	written  int64
	close    bool // close the connection after this response
	trailers []string
	hijacked bool
	err      error // a write to the connection failed

	// infoMu orders the writes that may come from other goroutines than
	// the handler's, before the response starts: a relayed 1xx (net/http's
	// Transport calls it from its reader) and "100 Continue" on the first
	// read of the body (from its writer). Once sent, hijacked or ended is
	// set under it, neither writes again: the buffer may be another
	// request's by then.
	infoMu    sync.Mutex
	continued bool // a 100 Continue went out
	ended     bool // finish is done; bw goes back to its pool

	gate yieldGate // a large body's writes give way every yieldAfter
}

// corkAbove: a body write larger than one TLS record is sent in one
// write(2) (trackedConn.cork).
const corkAbove = 16 << 10

// yieldAfter is how long a handler writing a large body runs before it
// gives way to the scheduler. Reading a busy upstream rarely blocks, so a
// download would otherwise run for tens of milliseconds at a stretch; at
// 10 ms Go's sysmon preempts it with a signal, takes its P when it is in a
// syscall (write(2) and read(2) are most of a stream's time) and then polls
// every 20 µs for the next millisecond. Yielding first keeps all of that
// from happening, for a few microseconds per yield.
const yieldAfter = 5 * time.Millisecond

// yield gives way to the scheduler; yieldHook lets a test count the calls
// (atomic, as earlier tests' connections may still be writing).
func yield() {
	if h := yieldHook.Load(); h != nil {
		(*h)()
	}
	runtime.Gosched()
}

var yieldHook atomic.Pointer[func()]

// yieldGate makes a long transfer give way to the scheduler once
// yieldAfter has passed since it last did (or since its first tick).
type yieldGate struct{ last time.Time }

func (g *yieldGate) tick() {
	if g.last.IsZero() {
		g.last = time.Now()
	} else if time.Since(g.last) > yieldAfter {
		yield()
		g.last = time.Now()
	}
}

// h1PreBuffer: a response whose whole body fits and arrives before the
// handler returns gets a Content-Length instead of chunks.
const h1PreBuffer = 4096

func (w *h1Writer) Header() http.Header { return w.header }

func (w *h1Writer) WriteHeader(code int) {
	if w.sent || w.status != 0 || w.hijacked {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// an informational answer goes out now; the final one follows
		w.infoMu.Lock()
		defer w.infoMu.Unlock()
		if w.sent || w.hijacked || w.ended || (code == http.StatusContinue && w.continued) || !w.req.ProtoAtLeast(1, 1) {
			// one 100 Continue (the broker's own may have gone first); none
			// to an HTTP/1.0 agent, which could take it for the answer
			return
		}
		writeStatusLine(w.bw, code)
		w.header.WriteSubset(w.bw, informationalExcluded)
		w.bw.WriteString("\r\n")
		w.bw.Flush()
		w.continued = w.continued || code == http.StatusContinue
		return
	}
	w.status = code
}

// informationalExcluded are header fields a 1xx response never carries
// (as net/http's server leaves them out).
var informationalExcluded = map[string]bool{"Content-Length": true, "Transfer-Encoding": true}

func (w *h1Writer) Write(p []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.sent && len(w.pre)+len(p) <= h1PreBuffer {
		w.pre = append(w.pre, p...)
		return len(p), nil
	}
	if !w.sent {
		w.commit(false)
	}
	return w.writeBody(p)
}

func (w *h1Writer) writeBody(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody || len(p) == 0 {
		return len(p), nil
	}
	if w.length >= 0 && w.written+int64(len(p)) > w.length {
		w.close = true
		return 0, http.ErrContentLength
	}
	if w.chunked {
		w.bw.Write(append(strconv.AppendInt(w.bw.AvailableBuffer(), int64(len(p)), 16), '\r', '\n'))
	}
	corked := w.tc != nil && len(p) > corkAbove
	if corked {
		w.gate.tick()
		w.tc.cork()
	}
	n, err := w.bw.Write(p)
	if corked {
		if uerr := w.tc.uncork(); err == nil {
			err = uerr
		}
	}
	if err == nil && w.chunked {
		_, err = w.bw.WriteString("\r\n")
	}
	w.written += int64(n)
	if err != nil {
		w.err, w.close = err, true
	}
	return n, err
}

// commit writes the status line and header. done says the handler has
// returned, so a body held in pre is the whole body.
func (w *h1Writer) commit(done bool) {
	w.infoMu.Lock()
	w.sent = true
	w.infoMu.Unlock()
	if w.status == 0 {
		w.status = http.StatusOK
	}
	h := w.header
	if w.req.Method == http.MethodHead || w.status == http.StatusNoContent || w.status == http.StatusNotModified {
		w.noBody = true
	}
	for _, v := range h["Trailer"] {
		for _, k := range strings.Split(v, ",") {
			if k = http.CanonicalHeaderKey(strings.TrimSpace(k)); k != "" {
				w.trailers = append(w.trailers, k)
			}
		}
	}
	if cl := h.Get("Content-Length"); cl != "" && len(w.trailers) == 0 {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n >= 0 {
			w.length = n
		} else {
			h.Del("Content-Length")
		}
	} else {
		h.Del("Content-Length")
	}
	h.Del("Transfer-Encoding")
	switch {
	case w.noBody || w.length >= 0:
	case done && len(w.trailers) == 0:
		w.length = int64(len(w.pre))
		if w.length > 0 || w.status >= 200 {
			h.Set("Content-Length", strconv.Itoa(len(w.pre)))
		}
	case w.req.ProtoAtLeast(1, 1):
		w.chunked = true
		h.Set("Transfer-Encoding", "chunked")
	default:
		w.close = true // HTTP/1.0: the end of the body is the end of the connection
	}
	// ReadRequest set Close from Connection: for HTTP/1.0 it is false only
	// when the agent asked for keep-alive, which a body of known length
	// allows (as net/http's server does)
	if w.req.Close {
		w.close = true
	}
	switch {
	case w.close:
		h.Set("Connection", "close")
	case !w.req.ProtoAtLeast(1, 1):
		h.Set("Connection", "keep-alive") // an HTTP/1.0 agent assumes close otherwise
	default:
		h.Del("Connection")
	}
	if _, ok := h["Date"]; !ok {
		h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	writeStatusLine(w.bw, w.status)
	h.WriteSubset(w.bw, trailerKeys(h))
	w.bw.WriteString("\r\n")
	if len(w.pre) > 0 {
		p := w.pre
		w.pre = nil
		w.writeBody(p)
	}
}

// writeStatusLine writes "HTTP/1.1 <code> <text>\r\n" (fmt.Fprintf showed in
// the c=1 profile, on the path before the response is flushed).
func writeStatusLine(bw *bufio.Writer, code int) {
	line := append(bw.AvailableBuffer(), "HTTP/1.1 "...) // no allocation
	line = strconv.AppendInt(line, int64(code), 10)
	line = append(line, ' ')
	line = append(line, http.StatusText(code)...)
	bw.Write(append(line, '\r', '\n'))
}

// trailerKeys are the header keys that carry trailers (TrailerPrefix),
// never sent in the header.
func trailerKeys(h http.Header) map[string]bool {
	var m map[string]bool
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			if m == nil {
				m = map[string]bool{}
			}
			m[k] = true
		}
	}
	return m
}

// Flush sends what is buffered (http.Flusher).
func (w *h1Writer) Flush() { _ = w.FlushError() }

// FlushError is Flush for http.ResponseController.
func (w *h1Writer) FlushError() error {
	if w.hijacked {
		return http.ErrHijacked
	}
	if !w.sent {
		w.commit(false)
	}
	if w.err != nil {
		return w.err
	}
	if err := w.bw.Flush(); err != nil {
		w.err, w.close = err, true
		return err
	}
	return nil
}

// Hijack hands the connection to the handler (protocol upgrades).
func (w *h1Writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	if w.sent {
		return nil, nil, errors.New("hijack after the response started")
	}
	if w.watch != nil {
		w.watch.stop() // the handler reads the connection from now on
	}
	w.infoMu.Lock()
	w.hijacked = true
	w.infoMu.Unlock()
	return w.conn, bufio.NewReadWriter(w.br, w.bw), nil
}

// end stops every late writer (a relayed 1xx, a "100 Continue") from
// touching bw, which goes back to its pool.
func (w *h1Writer) end() {
	w.infoMu.Lock()
	w.ended = true
	w.infoMu.Unlock()
}

// finish completes the response after the handler returned and says
// whether the connection can carry another request, and whether the
// agent may still be sending a request body nobody read.
func (w *h1Writer) finish() (keep, unread bool) {
	if !w.sent {
		w.commit(true)
	}
	if w.chunked && w.err == nil {
		w.bw.WriteString("0\r\n")
		// the trailers as net/http's server sends them: declared keys, then
		// TrailerPrefix ones; Header.Write keeps each value on one line
		trailers := http.Header{}
		for _, k := range w.trailers {
			for _, v := range w.header[k] {
				trailers.Add(k, v)
			}
		}
		for k, vv := range w.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
				for _, v := range vv {
					trailers.Add(name, v)
				}
			}
		}
		trailers.Write(w.bw)
		w.bw.WriteString("\r\n")
	}
	if w.length >= 0 && !w.noBody && w.written != w.length {
		w.close = true // short body: the agent must not read the next answer as its rest
	}
	if err := w.bw.Flush(); err != nil || w.err != nil {
		return false, false
	}
	if w.close {
		return false, false
	}
	// the next request starts where this one's body ends (a body the agent
	// still holds back for a "100 Continue" never sent ends the connection)
	if e, ok := w.req.Body.(*expectContinue); ok && !e.read.Load() {
		return false, false
	}
	if w.req.Body != nil && w.req.Body != http.NoBody {
		n, err := io.CopyN(io.Discard, w.req.Body, h1MaxDrain+1)
		if n > h1MaxDrain {
			return false, true
		}
		if err != io.EOF && err != nil {
			return false, false
		}
		if err := w.req.Body.Close(); err != nil {
			return false, false
		}
	}
	return true, false
}

// expectContinue sends "100 Continue" when the handler first reads a body
// the agent held back for it.
type expectContinue struct {
	io.ReadCloser
	w    *h1Writer
	once sync.Once
	read atomic.Bool
}

// Read sends "100 Continue" first, unless a 100 was relayed already or the
// response has started (net/http's Transport reads the body from its own
// goroutine, possibly late).
func (e *expectContinue) Read(p []byte) (int, error) {
	e.once.Do(func() {
		e.read.Store(true)
		w := e.w
		w.infoMu.Lock()
		defer w.infoMu.Unlock()
		if !w.sent && !w.hijacked && !w.ended && !w.continued {
			w.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
			w.bw.Flush()
			w.continued = true
		}
	})
	return e.ReadCloser.Read(p)
}
