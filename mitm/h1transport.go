package mitm

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"syscall"
	"time"
)

const (
	maxH1Body         = 1 << 20          // larger or chunked request bodies take net/http's Transport
	maxResponseHeader = 1 << 20          // both transports' response header limit
	handshakeTimeout  = 10 * time.Second // both transports' TLS handshake timeout
	maxInformational  = 5                // 1xx responses before the final one, as the Transport allows
)

var errTooManyInformational = errors.New("the upstream sent too many 1xx responses")

// idempotent says whether req may be sent again after a connection failed
// under it: the methods RFC 9110 calls idempotent, or a request that
// carries an idempotency key (the rule net/http's Transport follows).
func idempotent(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return req.Header.Get("Idempotency-Key") != "" || req.Header.Get("X-Idempotency-Key") != ""
}

// peekAfter: a connection idle for less than this is reused for a
// replayable request (idempotent, no body) without the liveness peek.
// Servers close keep-alive connections after seconds of idleness, not
// milliseconds, and say "Connection: close" when they end one for other
// reasons; a replayable request that still meets a closed connection is
// retried. Any other request always gets the peek.
var peekAfter = time.Second // a test sets it to 0

// h1Eligible says whether the fast path takes req.
func h1Eligible(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || (req.ContentLength >= 0 && req.ContentLength <= maxH1Body)
}

// h1Transport forwards a request over a pooled HTTP/1.1 upstream
// connection in the calling goroutine: it writes the request and reads the
// response itself, where net/http.Transport hands each request to a writer
// goroutine and each response back from a reader goroutine. On the small
// VMs this appliance runs on, each of those hand-offs wakes an idle vCPU
// and costs more than parsing the request; for one request at a time they
// were most of the broker's latency.
//
// It serves requests that arrive from the agent over HTTP/1.1 with no body
// or a body of known length up to maxH1Body: the request is written whole,
// then the response read, which a server that answers early without
// reading a large body could stall. Everything else goes through net/http's
// Transport, which writes and reads concurrently: chunked or large uploads
// from HTTP/1.1 agents through one that speaks only HTTP/1.1, HTTP/2 agents
// (gRPC among them) through one that speaks HTTP/2 to upstreams that offer
// it (see newTransport). The wire format is net/http's own: Request.Write and
// ReadResponse, with response headers limited to maxResponseHeader. A
// connection goes back to the pool only after its response body was read
// to the end and neither side asked to close; a pooled connection is
// checked for a close from the upstream (a non-blocking peek) before it is
// used again (peekAfter has the one exception), and an idempotent request
// without a body that meets a connection closed under it is retried once
// on a fresh one.
type h1Transport struct {
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
	tlsConfig *tls.Config // its own (HTTP/1.1 only), cloned per connection with ServerName set
	maxIdle   int         // per host:port
	idleTime  time.Duration

	mu   sync.Mutex
	idle map[poolKey][]*h1Conn // newest last
}

type h1Conn struct {
	key  poolKey
	raw  net.Conn // the TCP connection under TLS, for the liveness peek
	c    net.Conn
	lim  *headerLimit
	br   *bufio.Reader
	bw   *bufio.Writer
	used time.Time
}

// headerLimit bounds what a response's header may read from the
// connection; it is lifted once the header is parsed.
type headerLimit struct {
	r    io.Reader
	left int64
}

var errHeaderTooLarge = errors.New("the upstream's response header is larger than 1 MiB")

func (l *headerLimit) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errHeaderTooLarge
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

func newH1Transport(dial func(ctx context.Context, network, addr string) (net.Conn, error), cfg *tls.Config) *h1Transport {
	cfg.NextProtos = []string{"http/1.1"}
	return &h1Transport{dial: dial, tlsConfig: cfg, maxIdle: 256, idleTime: 90 * time.Second, idle: map[poolKey][]*h1Conn{}}
}

func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	key := poolKey{req.URL.Scheme, req.URL.Host} // no string built per request
	replayable := (req.Body == nil || req.Body == http.NoBody) && idempotent(req)
	for attempt := 0; ; attempt++ {
		pc, reused := t.get(key, replayable)
		if pc == nil {
			var err error
			if pc, err = t.connect(req.Context(), req.URL.Scheme, req.URL.Host, key); err != nil {
				return nil, err
			}
		}
		resp, err := t.exchange(pc, req)
		if err == nil {
			return resp, nil
		}
		pc.c.Close()
		// a pooled connection the upstream closed while idle: retry once
		// on a fresh one, when sending the request twice is harmless
		if reused && replayable && attempt == 0 && req.Context().Err() == nil && isClosedConn(err) {
			continue
		}
		return nil, err
	}
}

// exchange writes req and reads its response on pc.
func (t *h1Transport) exchange(pc *h1Conn, req *http.Request) (*http.Response, error) {
	if d, ok := req.Context().Deadline(); ok {
		pc.c.SetDeadline(d)
	} else {
		pc.c.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(req.Context(), func() { pc.c.SetDeadline(time.Unix(1, 0)) })
	if err := req.Write(pc.bw); err != nil {
		stop()
		return nil, err
	}
	if err := pc.bw.Flush(); err != nil {
		stop()
		return nil, err
	}
	for informational := 0; ; {
		pc.lim.left = maxResponseHeader
		resp, err := http.ReadResponse(pc.br, req)
		pc.lim.left = 1 << 62
		if err != nil {
			stop()
			return nil, err
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			resp.Body.Close()
			if informational++; informational > maxInformational {
				stop()
				return nil, errTooManyInformational
			}
			if err := relayInformational(req, resp); err != nil {
				stop()
				return nil, err
			}
			continue // the final answer follows
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			// the connection now belongs to the upgraded protocol
			stop()
			pc.c.SetDeadline(time.Time{})
			resp.Body = &upgradedConn{Reader: pc.br, Conn: pc.c}
			return resp, nil
		}
		reusable := !resp.Close && !req.Close
		if resp.Body == http.NoBody {
			// a cancellation that already began may still set a past
			// deadline: such a connection is not pooled
			if stop() && reusable {
				t.put(pc)
			} else {
				pc.c.Close()
			}
			return resp, nil
		}
		resp.Body = &h1Body{rc: resp.Body, pc: pc, t: t, reusable: reusable, stop: stop, large: resp.ContentLength > fillAbove}
		return resp, nil
	}
}

// relayInformational hands a 1xx response other than 100 Continue (103
// Early Hints) to the request's trace, as net/http's Transport does, so
// ReverseProxy relays it to the agent (scrubbed on the way: see
// scrubInformational). 100 Continue is the agent's own business with
// serveH1 (the body was sent already).
func relayInformational(req *http.Request, resp *http.Response) error {
	trace := httptrace.ContextClientTrace(req.Context())
	if resp.StatusCode == http.StatusContinue || trace == nil || trace.Got1xxResponse == nil {
		return nil
	}
	return trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header))
}

// h1Body returns its connection to the pool once read to the end.
type h1Body struct {
	rc       io.ReadCloser
	pc       *h1Conn
	t        *h1Transport
	reusable bool
	stop     func() bool
	done     bool
	large    bool        // a body of known length over fillAbove
	pf       *prefetcher // reads a large body ahead (nil for others, before the first Read, or when no slot was free)
	began    bool
	err      error // the read error that ended the body early, returned again to a later Read
}

// fillAbove: bodies of known length above it are read in large chunks; a
// smaller or open-ended body (a stream of events) is passed on as it comes.
const fillAbove = 1 << 20

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		if b.err != nil {
			return 0, b.err
		}
		return 0, io.EOF
	}
	if b.large && !b.began {
		b.pf = newPrefetcher(b.rc, prefetchSlots)
	}
	b.began = true
	// A large body is read ahead in large chunks (see prefetcher) or, when
	// prefetchMax bodies are read ahead already, in full buffers here.
	// Either way the agent is written in fewer, larger writes than one TLS
	// record (16 KiB) at a time.
	var n int
	var err error
	switch {
	case b.pf != nil:
		n, err = b.pf.Read(p)
	case b.large:
		n, err = readFull(b.rc, p)
	default:
		n, err = b.rc.Read(p)
	}
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.err = err
		b.finish(false)
	}
	return n, err
}

// readFull reads into p until it is full or r fails or ends, and returns
// r's error as it is (io.EOF included, unlike io.ReadFull, which cannot
// tell a short body from an upstream's own io.ErrUnexpectedEOF). A source
// that keeps returning nothing gets io.ErrNoProgress.
func readFull(r io.Reader, p []byte) (int, error) { return readUntil(r, p, nil) }

// readUntil is readFull that also stops, after a read, once enough(n) says
// the n bytes read so far will do.
func readUntil(r io.Reader, p []byte, enough func(n int) bool) (int, error) {
	n := 0
	for empty := 0; n < len(p); {
		m, err := r.Read(p[n:])
		n += m
		if err != nil {
			return n, err
		}
		if m > 0 {
			empty = 0
		} else if empty++; empty >= 100 {
			return n, io.ErrNoProgress
		}
		if enough != nil && enough(n) {
			break
		}
	}
	return n, nil
}

func (b *h1Body) Close() error {
	if !b.done {
		b.finish(false) // not read to the end: the connection cannot be reused
	}
	return nil
}

func (b *h1Body) finish(atEOF bool) {
	b.done = true
	// a cancellation that already began may still set a past deadline on
	// the connection: it is then closed, never pooled for another request
	if b.stop() && atEOF && b.reusable {
		b.rc.Close()
		b.pf.close() // its goroutine is done: it read to the end
		b.t.put(b.pc)
		return
	}
	// The connection goes first: closing a body net/http read with
	// ReadResponse drains it to its end, which for an endless stream
	// (events) the agent left would never come. A prefetcher's read in
	// progress fails with it.
	b.pc.c.Close()
	b.pf.close()
	b.rc.Close()
}

// upgradedConn is a 101 response's body: the raw connection, read through
// the buffer that may already hold the first bytes of the new protocol.
type upgradedConn struct {
	io.Reader
	net.Conn
}

func (u *upgradedConn) Read(p []byte) (int, error) { return u.Reader.Read(p) }

func (t *h1Transport) connect(ctx context.Context, scheme, hostport string, key poolKey) (*h1Conn, error) {
	raw, err := t.dial(ctx, "tcp", hostport)
	if err != nil {
		return nil, err
	}
	c := raw
	if scheme == "https" {
		host, _, _ := net.SplitHostPort(hostport)
		cfg := t.tlsConfig.Clone()
		cfg.ServerName = host
		tc := tls.Client(raw, cfg)
		hctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			raw.Close()
			return nil, err
		}
		c = tc
	}
	lim := &headerLimit{r: c, left: 1 << 62}
	return &h1Conn{key: key, raw: raw, c: c, lim: lim, br: bufio.NewReaderSize(lim, 4096), bw: bufio.NewWriterSize(c, 4096)}, nil
}

// poolKey names the connections a request may reuse: scheme and the bound
// name with its port (never an address).
type poolKey struct{ scheme, hostport string }

// get takes the newest idle connection for key that is still open. For a
// replayable request (a retry covers a closed connection) the liveness
// peek is skipped on connections idle for less than peekAfter.
func (t *h1Transport) get(key poolKey, replayable bool) (*h1Conn, bool) {
	now := time.Now()
	for {
		t.mu.Lock()
		list := t.idle[key]
		if len(list) == 0 {
			t.mu.Unlock()
			return nil, false
		}
		pc := list[len(list)-1]
		list[len(list)-1] = nil
		t.idle[key] = list[:len(list)-1]
		t.mu.Unlock()
		idle := now.Sub(pc.used)
		if idle < t.idleTime && pc.br.Buffered() == 0 && ((replayable && idle < peekAfter) || alive(pc.raw)) {
			return pc, true
		}
		pc.c.Close()
	}
}

// put pools pc, and closes connections idle for longer than idleTime
// (the oldest are first in the list).
func (t *h1Transport) put(pc *h1Conn) {
	pc.used = time.Now()
	var stale []*h1Conn
	t.mu.Lock()
	list := t.idle[pc.key]
	for len(list) > 0 && pc.used.Sub(list[0].used) > t.idleTime {
		stale = append(stale, list[0])
		list[0] = nil
		list = list[1:]
	}
	if len(list) >= t.maxIdle {
		stale = append(stale, pc)
	} else {
		list = append(list, pc)
	}
	t.idle[pc.key] = list
	t.mu.Unlock()
	for _, s := range stale {
		s.c.Close()
	}
}

// CloseIdleConnections closes every pooled connection.
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = map[poolKey][]*h1Conn{}
	t.mu.Unlock()
	for _, list := range idle {
		for _, pc := range list {
			pc.c.Close()
		}
	}
}

// alive reports whether an idle connection is still open: a non-blocking
// peek finds nothing to read (EAGAIN). Data or EOF on an idle HTTP/1.1
// connection both mean it cannot carry another request.
func alive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ok = rerr == syscall.EAGAIN
		return true // never wait
	})
	return err == nil && ok
}

// isClosedConn says a request failed because the connection was closed
// under it before any response came.
func isClosedConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}
