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
// close-delimited for HTTP/1.0 (an HTTP/1.0 agent that asked for
// keep-alive keeps its connection after an answer of known length);
// "100 Continue" sent when the handler first reads a body that asks for
// it; the request body drained (up to 256 KiB)
// before the next request is read, else the connection closed; Hijack for
// protocol upgrades; a panic (http.ErrAbortHandler included) closing the
// connection; a request's context canceled when its agent disconnects
// (watched only for requests still running after disconnectAfter). What it
// leaves out: Content-Type is never sniffed (a proxy passes the upstream's
// through).
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
