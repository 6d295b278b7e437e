package mitm

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// serveH1 serves the HTTP/1.1 requests of one terminated agent connection
// in the connection's own goroutine, one after another, each through
// handle — the loop net/http's server runs, without what it adds per
// request: a goroutine that reads ahead to notice the client leaving, a
// cancelable context and its timers. On the small VMs this appliance runs
// on, those cost more than the request itself (a bare loop measured 0.55
// of direct throughput where net/http's server with ReverseProxy measured
// 0.33). Connections that negotiated HTTP/2 and plain-HTTP connections
// stay on net/http's server.
//
// What it keeps from net/http's server: the request parser
// (http.ReadRequest) and its refusals, plus the server's own checks (a
// Host header on HTTP/1.1, exactly one and well-formed, valid header names
// and values, only "100-continue" as an Expect); a 64 KiB header limit and
// the 10 s header and 120 s idle timeouts of the inner server; a response
// framed by Content-Length when it is known (or when the whole body came
// before the handler returned), chunked otherwise (with trailers), and
// close-delimited for HTTP/1.0; "100 Continue" sent when the handler first
// reads a body that asks for it; the request body drained (up to 256 KiB)
// before the next request is read, else the connection closed; Hijack for
// protocol upgrades; a panic (http.ErrAbortHandler included) closing the
// connection; a request's context canceled when its agent disconnects
// (watched only for requests still running after disconnectAfter). What it
// leaves out: Content-Type is never sniffed (a proxy passes the upstream's
// through), and HTTP/1.0 keep-alive is not offered.
func (b *Broker) serveH1(c *tls.Conn, st *connState) {
	defer c.Close()
	state := c.ConnectionState()
	lim := &headerLimit{r: c, left: 1 << 62}
	// The read and write buffers are taken from pools for a request and
	// given back while the connection waits for the next one, so an idle
	// connection holds neither (8 KiB of its ~30). The wait itself reads
	// the first byte straight from the connection; the reader then
	// starts with it.
	first := &firstByte{r: lim}
	var br *bufio.Reader
	var bw *bufio.Writer
	defer func() { // not after a hijack: the buffers went with it
		if br != nil {
			putH1Reader(br)
		}
		if bw != nil {
			putH1Writer(bw)
		}
	}()
	ctx := context.WithValue(context.Background(), connKey{}, st)
	remote := c.RemoteAddr().String()
	tc, _ := c.NetConn().(*trackedConn)
	watch := newDisconnectWatch(c)
	defer watch.stop()
	for {
		st.h1Busy.Store(false)
		if b.isClosed() {
			return
		}
		if br == nil || br.Buffered() == 0 { // nothing pipelined: wait idle
			if br != nil {
				putH1Reader(br)
				br = nil
			}
			c.SetReadDeadline(time.Now().Add(h1IdleTimeout))
			if n, _ := c.Read(first.b[:]); n == 0 {
				return // closed, idle for too long, or Shutdown closed it
			}
			first.has = true
			br = h1Readers.Get().(*bufio.Reader)
			br.Reset(first)
		}
		if bw == nil {
			bw = h1Writers.Get().(*bufio.Writer)
			bw.Reset(c)
		}
		st.h1Busy.Store(true)
		c.SetReadDeadline(time.Now().Add(h1HeaderTimeout))
		lim.left = h1MaxHeader + 4096 // the buffer reads a little past the header, as net/http allows
		req, err := http.ReadRequest(br)
		lim.left = 1 << 62
		if err != nil {
			var ne net.Error
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.As(err, &ne) {
				// a malformed request gets an answer; a connection that
				// closed or timed out does not (as net/http's server)
				status := http.StatusBadRequest
				switch {
				case errors.Is(err, errHeaderTooLarge):
					status = http.StatusRequestHeaderFieldsTooLarge
				case strings.Contains(err.Error(), "unsupported transfer encoding"):
					status = http.StatusNotImplemented // as net/http's server answers
				}
				writeH1Refusal(bw, status, "")
			}
			return
		}
		c.SetReadDeadline(time.Time{})
		if status, why := checkH1Request(req); status != 0 {
			writeH1Refusal(bw, status, why)
			return
		}
		req.RemoteAddr, req.TLS = remote, &state
		rctx, rcancel := context.WithCancel(ctx)
		req = req.WithContext(rctx)
		w := &h1Writer{conn: c, tc: tc, br: br, bw: bw, req: req, header: http.Header{}, length: -1}
		var body *bodyEnd
		if req.Body != http.NoBody {
			body = &bodyEnd{ReadCloser: req.Body}
			req.Body = body
			if req.ProtoAtLeast(1, 1) && strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
				req.Body = &expectContinue{ReadCloser: req.Body, w: w}
			}
		}
		watch.start(br, body, rcancel)
		w.watch = watch
		ok := b.serveOneH1(w, req)
		watch.stop()
		rcancel()
		if !ok || w.hijacked {
			br, bw = nil, nil // a panicking handler may hold them; a hijacker does
			return
		}
		keep, unread := w.finish()
		w.end()
		putH1Writer(bw) // the response is flushed (or failed): the next request takes one again
		bw = nil
		if !keep {
			// The request body was not read to its end and closed: net/http's
			// Transport may still be reading it through br from its own
			// goroutine (a stalled upload the upstream did not wait for), so
			// br is never pooled again, only dropped.
			br = nil
		}
		if unread {
			// The agent is still sending a body nobody reads: closing now
			// would reset the connection and could destroy the answer in
			// flight. Close our side, give the agent time to read it
			// (net/http's server does the same).
			c.CloseWrite()
			time.Sleep(h1LingerOnClose)
			return
		}
		if !keep {
			return
		}
	}
}

const (
	h1HeaderTimeout = 10 * time.Second
	h1IdleTimeout   = 120 * time.Second
	h1MaxHeader     = 64 << 10
	h1MaxDrain      = 256 << 10 // unread request body discarded to keep the connection
	h1LingerOnClose = 500 * time.Millisecond
)

// disconnectAfter is how long a request may run before serveH1 starts
// watching its connection for the agent leaving: fast requests never pay
// for a watcher, a slow upstream call (a model's answer) is canceled soon
// after its agent went away, as net/http's server would.
var disconnectAfter = time.Second

// disconnectWatch cancels a request whose agent closed the connection:
// disconnectAfter into a request, once the request body was read to its
// end, a goroutine peeks at the connection, and an error or EOF there
// means the agent left. A byte that arrives instead (a pipelined request)
// stays in br for the next request. One per connection, armed per request.
type disconnectWatch struct {
	c     net.Conn
	timer *time.Timer

	mu     sync.Mutex
	br     *bufio.Reader      // the request's reader
	armed  bool               // a request is being served
	body   *bodyEnd           // its body; nil when it has none
	cancel context.CancelFunc // cancels it
	done   chan struct{}      // closed when the peeking goroutine ended; nil if none started
}

func newDisconnectWatch(c net.Conn) *disconnectWatch {
	w := &disconnectWatch{c: c}
	w.timer = time.AfterFunc(time.Hour, w.fire)
	w.timer.Stop()
	return w
}

// start arms the watch for one request read through br.
func (w *disconnectWatch) start(br *bufio.Reader, body *bodyEnd, cancel context.CancelFunc) {
	w.mu.Lock()
	w.armed, w.br, w.body, w.cancel = true, br, body, cancel
	w.mu.Unlock()
	w.timer.Reset(disconnectAfter)
}

func (w *disconnectWatch) fire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.armed || w.done != nil || (w.body != nil && !w.body.done.Load()) {
		return // the handler may still read the body from br
	}
	done, cancel, br := make(chan struct{}), w.cancel, w.br
	w.done = done
	go func() {
		defer close(done)
		if _, err := br.Peek(1); err != nil && !isTimeout(err) {
			cancel()
		}
	}()
}

// stop disarms the watch before anyone reads from br again; it does
// nothing when the watch is not armed.
func (w *disconnectWatch) stop() {
	w.timer.Stop()
	w.mu.Lock()
	if !w.armed {
		w.mu.Unlock()
		return
	}
	done := w.done
	w.armed, w.br, w.body, w.cancel, w.done = false, nil, nil, nil, nil
	w.mu.Unlock()
	if done != nil {
		w.c.SetReadDeadline(time.Unix(1, 0)) // unblock the peek
		<-done
		w.c.SetReadDeadline(time.Time{})
	}
}

// Pools of the buffers serveH1 lends a connection for one request.
var (
	h1Readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}
	h1Writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4096) }}
)

func putH1Reader(br *bufio.Reader) {
	br.Reset(nil)
	if h1ReaderPut != nil {
		h1ReaderPut(br)
	}
	h1Readers.Put(br)
}

// h1ReaderPut sees every reader given back (tests).
var h1ReaderPut func(*bufio.Reader)

func putH1Writer(bw *bufio.Writer) {
	bw.Reset(nil)
	h1Writers.Put(bw)
}

// firstByte reads the byte serveH1 read while waiting for a request, then
// from r.
type firstByte struct {
	b   [1]byte
	has bool
	r   io.Reader
}

func (f *firstByte) Read(p []byte) (int, error) {
	if f.has && len(p) > 0 {
		p[0] = f.b[0]
		f.has = false
		return 1, nil
	}
	return f.r.Read(p)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// bodyEnd notes when a request body was read to its end.
type bodyEnd struct {
	io.ReadCloser
	done atomic.Bool
}

func (b *bodyEnd) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.done.Store(true)
	}
	return n, err
}

// serveOneH1 runs the handler; false if it panicked (the connection is
// then closed, as net/http's server does).
func (b *Broker) serveOneH1(w *h1Writer, req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				b.log.Error("panic serving a request", "panic", fmt.Sprint(v))
			}
			ok = false
		}
	}()
	b.serveTerminated(w, req)
	return true
}

// checkH1Request applies net/http's server checks that ReadRequest does
// not: a status and a reason to refuse the request, or 0.
func checkH1Request(req *http.Request) (int, string) {
	if req.ProtoMajor != 1 {
		return http.StatusHTTPVersionNotSupported, "unsupported protocol version"
	}
	// ReadRequest refused several Host headers and moved the one into
	// req.Host (or took the absolute URL's)
	switch {
	case req.ProtoAtLeast(1, 1) && req.Host == "" && req.Method != http.MethodConnect:
		return http.StatusBadRequest, "missing required Host header"
	case req.Host != "" && !httpguts.ValidHostHeader(req.Host):
		return http.StatusBadRequest, "malformed Host header"
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return http.StatusBadRequest, "invalid header name"
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return http.StatusBadRequest, "invalid header value"
			}
		}
	}
	if e := req.Header.Get("Expect"); e != "" && !strings.EqualFold(e, "100-continue") {
		return http.StatusExpectationFailed, "unsupported Expect"
	}
	return 0, ""
}

// writeH1Refusal answers a request the loop will not serve, and the
// connection closes after it.
func writeH1Refusal(bw *bufio.Writer, status int, why string) {
	body := strconv.Itoa(status) + " " + http.StatusText(status)
	if why != "" {
		body += ": " + why
	}
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		status, http.StatusText(status), len(body), body)
	bw.Flush()
}

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
}

// corkAbove: a body write larger than one TLS record is sent in one
// write(2) (trackedConn.cork).
const corkAbove = 16 << 10

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
		fmt.Fprintf(w.bw, "HTTP/1.1 %d %s\r\n", code, http.StatusText(code))
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
		fmt.Fprintf(w.bw, "%x\r\n", len(p))
	}
	corked := w.tc != nil && len(p) > corkAbove
	if corked {
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
	if w.req.Close || !w.req.ProtoAtLeast(1, 1) || strings.EqualFold(w.req.Header.Get("Connection"), "close") {
		w.close = true
	}
	if w.close {
		h.Set("Connection", "close")
	} else {
		h.Del("Connection")
	}
	if _, ok := h["Date"]; !ok {
		h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	fmt.Fprintf(w.bw, "HTTP/1.1 %d %s\r\n", w.status, http.StatusText(w.status))
	h.WriteSubset(w.bw, trailerKeys(h))
	w.bw.WriteString("\r\n")
	if len(w.pre) > 0 {
		p := w.pre
		w.pre = nil
		w.writeBody(p)
	}
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
		for _, k := range w.trailers {
			for _, v := range w.header[k] {
				fmt.Fprintf(w.bw, "%s: %s\r\n", k, headerValue(v))
			}
		}
		for k, vv := range w.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
				for _, v := range vv {
					fmt.Fprintf(w.bw, "%s: %s\r\n", http.CanonicalHeaderKey(name), headerValue(v))
				}
			}
		}
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

// headerValue keeps a trailer value on one line.
func headerValue(v string) string {
	return strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, v)
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
