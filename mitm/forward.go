package mitm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/agentvault/agent-vault/mitm/inject"
	"github.com/agentvault/agent-vault/mitm/scrub"
	"github.com/agentvault/agent-vault/policy"
)

type forwardKey struct{}

// forward is one allowed request on its way upstream. It travels in the
// request context from the handler through Rewrite, the transport's dial,
// ModifyResponse and ErrorHandler.
type forward struct {
	svc     *policy.Service
	secret  []byte
	host    string // the bound name: SNI and outbound Host
	port    int
	tls     bool
	dest    dest
	scrub   *scrub.Scrubber // every encoding of every injected value, compiled once for headers, body, trailers and error text
	injErr  error
	errCode string
	status  int  // the upstream's status, seen in ModifyResponse
	agentH1 bool // the agent speaks HTTP/1.1: h1Transport may take the request
}

func forwardFrom(ctx context.Context) *forward {
	f, _ := ctx.Value(forwardKey{}).(*forward)
	return f
}

var (
	errInject      = errors.New("the credential could not be attached")
	errEncodedBody = errors.New("the upstream sent an encoded body that cannot be scrubbed")
	// errUnscrubbableUpgrade: a 101 to anything but plain WebSocket
	// frames (another protocol, or an extension the agent did not get to
	// offer) on a request carrying a credential.
	errUnscrubbableUpgrade = errors.New("the upstream switched to a protocol that cannot be scrubbed")
	errNoDest              = errors.New("no validated destination for this dial")
)

// newTransport is a net/http upstream transport: with h2, HTTP/2 where the
// upstream offers it (for HTTP/2 agents), else HTTP/1.1 only (for HTTP/1.1
// agents' uploads the fast path does not take: over HTTP/2 a large upload
// waits on the upstream's flow-control window updates and costs a frame
// header per 16 KiB; measured here, 460-470 MiB/s over HTTP/2 against
// 630-660 over HTTP/1.1, with 1.5 against 1.25 ms of broker CPU per MiB).
// Its pool is keyed by scheme and "name:port" (URL.Host carries the bound
// name, never an IP), so a connection opened for one name is never reused
// for another; the address dialled comes from the request's validated
// destination.
func (b *Broker) newTransport(h2 bool) *http.Transport {
	t := &http.Transport{
		Proxy:                  nil, // never an environment proxy
		DialContext:            b.dialUpstream,
		TLSClientConfig:        b.upstreamTLS(),
		TLSHandshakeTimeout:    handshakeTimeout,
		ForceAttemptHTTP2:      h2,
		MaxIdleConns:           1024,
		MaxIdleConnsPerHost:    256,
		IdleConnTimeout:        90 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: maxResponseHeader,
	}
	if !h2 {
		t.Protocols = new(http.Protocols)
		t.Protocols.SetHTTP1(true)
		t.TLSClientConfig.NextProtos = []string{"http/1.1"} // as h1Transport offers
		t.WriteBufferSize = chunkWriteBuffer
	}
	return t
}

// upstreamTLS is a fresh upstream TLS configuration: system roots plus
// --upstream-ca, TLS 1.2 or later. Each transport gets its own (net/http
// rewrites its config's NextProtos for HTTP/2 on first use).
func (b *Broker) upstreamTLS() *tls.Config {
	return &tls.Config{RootCAs: b.cfg.UpstreamRoots, MinVersion: tls.VersionTLS12}
}

// dialUpstream dials only the addresses validated for the request's name.
func (b *Broker) dialUpstream(ctx context.Context, network, addr string) (net.Conn, error) {
	f := forwardFrom(ctx)
	if f == nil {
		return nil, errNoDest
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil || host != f.host || portStr != strconv.Itoa(f.port) {
		return nil, fmt.Errorf("dial %s: %w", addr, errNoDest)
	}
	var lastErr error = errNoDest
	for _, ip := range f.dest.ips {
		c, err := b.dialer.DialContext(ctx, network, netip.AddrPortFrom(ip, uint16(f.port)).String())
		if err == nil {
			return c, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

// guardTransport refuses to send a request whose credential could not be
// attached (Rewrite cannot return an error), and picks the upstream
// transport: an HTTP/1.1 agent's request goes over HTTP/1.1 (h1, or t1 for
// bodies h1 does not take), an HTTP/2 agent's over t.
type guardTransport struct {
	t  http.RoundTripper
	t1 http.RoundTripper
	h1 *h1Transport
}

func (g guardTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	f := forwardFrom(req.Context())
	if f == nil {
		return nil, errNoDest
	}
	if f.injErr != nil {
		return nil, errInject
	}
	if f.agentH1 && g.h1 != nil {
		if h1Eligible(req) {
			return g.h1.RoundTrip(req)
		}
		body := req.Body
		if req.ContentLength > fillAbove {
			body = newReadAheadUpload(body)
		}
		return g.t1.RoundTrip(withBody(req, &yieldingBody{ReadCloser: body}))
	}
	if req.ContentLength > maxH1Body {
		return g.t.RoundTrip(withBody(req, &recordSized{ReadCloser: req.Body}))
	}
	return g.t.RoundTrip(req)
}

// withBody is a copy of req (RoundTrip must not change its argument) with
// body.
func withBody(req *http.Request, body io.ReadCloser) *http.Request {
	req = req.WithContext(req.Context())
	req.Body = body
	return req
}

// yieldingBody is an upload net/http's Transport writes from a goroutine of
// its own: a long one gives way to the scheduler every yieldAfter, for the
// reason a long download does (see yieldAfter). Per 64 MiB upload: 146
// sysmon wake-ups and 5.4 preemption signals before, 15 and 0 after.
//
// Each Read returns at most chunkPayload bytes, so that a chunk of a
// streamed (chunked) upload, with its size line and closing CRLF, is
// exactly two full TLS records: net/http flushes after every chunk, and
// with its default 4 KiB write buffer each 32 KiB chunk left in four
// records and write(2)s (the size line with the first 4 KiB, 16 KiB, the
// rest, and the CRLF alone); with a larger buffer but whole 32 KiB reads,
// in three (the last carrying 8 bytes). A body of known length is written
// in pieces of the same size: two records each, as before.
type yieldingBody struct {
	io.ReadCloser
	gate yieldGate
}

// chunkPayload is two TLS records' plaintext less a chunk's framing: the
// size line "7ff8\r\n" and the closing CRLF.
const chunkPayload = 32<<10 - 8

// chunkWriteBuffer is the HTTP/1.1 upload transport's write buffer, which
// holds one such chunk whole. The cost is 32 KiB per connection of that
// transport, which carries only HTTP/1.1 agents' chunked and large uploads;
// h1Transport keeps 4 KiB.
const chunkWriteBuffer = 32 << 10

func (b *yieldingBody) Read(p []byte) (int, error) {
	b.gate.tick()
	return b.ReadCloser.Read(p[:min(len(p), chunkPayload)])
}

// readAheadUpload is an HTTP/1.1 agent's upload of known length over
// fillAbove, read ahead of net/http's Transport by a prefetcher, so the
// agent side's decryption runs beside the upstream side's encryption as a
// download's do (upload_64MiB, 6 alternating pairs: 652-733 MiB/s with it,
// 609-660 without). The read-ahead begins with the Transport's first read,
// never before: an agent's "Expect: 100-continue" is answered when the
// upstream's is (expectContinue), as without it. Uploads have their own
// budget of read-ahead slots (uploadSlots).
//
// The Transport may close a request body from one goroutine (its caller's,
// when the upstream fails) while its writer goroutine reads it. The
// prefetcher's Read and close must not overlap, so they take turns under
// mu, and Close first closes abort, which ends a Read waiting for the
// agent's next bytes: Close never waits on the agent (rc, ReverseProxy's
// wrapper of the agent's body, closes at once, as before). net/http's
// Transport itself waits for its writer goroutine before it returns an
// error, so an upstream that goes away while the agent pauses mid-body is
// answered when the agent sends again or leaves, with a read-ahead or
// without.
//
// What it costs: bytes the agent sent just before it pauses can wait in
// the broker until it sends more or the body ends (up to one chunk; a chunk
// goes early only once a read returns, see prefetcher), where the
// Transport passed them on at once. An agent that declares a large body
// and then waits for the answer before sending the rest could wait on
// itself; HTTP/1.1 clients send a body of known length whole, and
// full-duplex ones stream (chunked) or use HTTP/2, neither read ahead.
type readAheadUpload struct {
	rc     io.ReadCloser
	abort  chan struct{} // closed by Close
	once   sync.Once
	mu     sync.Mutex
	pf     *prefetcher
	began  bool
	closed bool
}

func newReadAheadUpload(rc io.ReadCloser) *readAheadUpload {
	return &readAheadUpload{rc: rc, abort: make(chan struct{})}
}

var errUploadClosed = errors.New("read on a closed upload body")

func (u *readAheadUpload) Read(p []byte) (int, error) {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return 0, errUploadClosed
	}
	if !u.began {
		u.began = true
		if u.pf = newPrefetcher(u.rc, uploadSlots); u.pf != nil {
			u.pf.abort = u.abort
		}
	}
	pf := u.pf
	if pf == nil {
		// no slot: read as without it; nothing of ours to guard
		u.mu.Unlock()
		return u.rc.Read(p)
	}
	defer u.mu.Unlock()
	return pf.Read(p)
}

func (u *readAheadUpload) Close() error {
	u.once.Do(func() { close(u.abort) })
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil
	}
	u.closed = true
	err := u.rc.Close()
	u.pf.close()
	return err
}

// recordSized is an HTTP/2 agent's large upload on its way to net/http's
// Transport, which speaks HTTP/2 to an upstream that offers it: each Read
// fills up to recordPayload bytes (fewer only at the end), so a DATA frame
// and its 9-byte header make exactly one TLS record. Where frames are
// 16 KiB (the protocol's default size, and every upstream's until its
// SETTINGS arrive), a frame read 16 KiB at a time is 9 bytes over the
// record limit: two records and two write(2)s each, the second carrying
// nine bytes. Only bodies of known length over maxH1Body are held until a
// record's worth has come; streamed uploads pass as they arrive. (An agent
// that declares a large length and then waits for the answer before it
// sends its last bytes would wait with up to 16 KiB held here; such
// full-duplex clients use streamed bodies.)
type recordSized struct{ io.ReadCloser }

// recordPayload is a TLS record's largest plaintext less an HTTP/2 frame
// header.
const recordPayload = 16<<10 - 9

func (r *recordSized) Read(p []byte) (int, error) {
	return readFull(r.ReadCloser, p[:min(len(p), recordPayload)])
}

// scrubInformational readies a 1xx response's header for the agent, as
// modifyResponse does the final one's: no Alt-Svc (the agent stays on
// TCP), every injected value redacted. ReverseProxy relays a 1xx (103
// Early Hints) past ModifyResponse, by copying its header into the
// agent's and calling WriteHeader: countingWriter calls this there, for
// both upstream transports.
func scrubInformational(f *forward, h http.Header) {
	h.Del("Alt-Svc")
	if f.scrub != nil {
		f.scrub.Header(h)
	}
}

func (b *Broker) newReverseProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite:   b.rewrite,
		Transport: guardTransport{t: b.transport, t1: b.upload1, h1: b.h1},
		// 0: ReverseProxy itself flushes at once for text/event-stream and
		// bodies of unknown length (streams), and sends a response of
		// known length in as few writes as it can: one wake-up of the
		// agent instead of one for the headers and one per body chunk.
		FlushInterval:  0,
		BufferPool:     bufferPool{},
		ModifyResponse: b.modifyResponse,
		ErrorHandler:   b.upstreamError,
		ErrorLog:       slog.NewLogLogger(b.log.Handler(), slog.LevelDebug),
	}
}

// rewrite points the outbound request at the bound name and injects the
// credential. ReverseProxy has already removed hop-by-hop headers
// (Proxy-Authorization included) and X-Forwarded-*/Forwarded.
func (b *Broker) rewrite(pr *httputil.ProxyRequest) {
	f := forwardFrom(pr.In.Context())
	out := pr.Out
	out.URL.Scheme = "http"
	if f.tls {
		out.URL.Scheme = "https"
	}
	out.URL.Host = net.JoinHostPort(f.host, strconv.Itoa(f.port))
	out.URL.User = nil
	out.Host = hostHeader(f.host, f.port, f.tls)
	for k := range out.Header {
		if strings.HasPrefix(k, "X-Agent-Vault-") {
			delete(out.Header, k)
		}
	}
	if f.svc.Auth.Kind != policy.AuthNone {
		// Bodies must arrive decoded to be scrubbed: the transport asks for
		// gzip itself and decodes it. WebSocket frames likewise: no
		// compression extension is offered (wsScrubber).
		out.Header.Del("Accept-Encoding")
		out.Header.Del("Sec-WebSocket-Extensions")
	}
	// Apply strips the agent's own auth and proxy headers for every kind,
	// auth none included, then injects.
	injected, err := inject.Apply(out, f.svc, f.secret)
	if err != nil {
		f.injErr = err
		return
	}
	if f.svc.Auth.Kind != policy.AuthNone {
		f.scrub = b.scrubs.get(append(injected, f.secret))
	}
}

// modifyResponse scrubs every injected value from the response headers,
// body and trailers, and drops Alt-Svc (the agent must stay on TCP).
func (b *Broker) modifyResponse(resp *http.Response) error {
	resp.Header.Del("Alt-Svc")
	f := forwardFrom(resp.Request.Context())
	if f == nil {
		return nil
	}
	f.status = resp.StatusCode
	if f.scrub == nil || f.scrub.Empty() {
		return nil
	}
	f.scrub.Header(resp.Header)
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The upgraded stream is scrubbed frame by frame; a protocol the
		// broker cannot read is refused rather than relayed.
		rwc, ok := resp.Body.(io.ReadWriteCloser)
		if !ok || !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") || resp.Header.Get("Sec-WebSocket-Extensions") != "" {
			return errUnscrubbableUpgrade
		}
		resp.Body = newWSScrubber(rwc, f.scrub)
		return nil
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return errEncodedBody
	}
	// Redaction keeps lengths (mitm/scrub), so Content-Length stays valid.
	resp.Body = f.scrub.Reader(&trailerScrubber{ReadCloser: resp.Body, resp: resp, s: f.scrub})
	return nil
}

// trailerScrubber scrubs the trailers once the body is read to its end
// (the transport fills them in then).
type trailerScrubber struct {
	io.ReadCloser
	resp *http.Response
	s    *scrub.Scrubber
}

func (t *trailerScrubber) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if err == io.EOF && len(t.resp.Trailer) > 0 {
		t.s.Header(t.resp.Trailer)
	}
	return n, err
}

// redactorOf is the scrubber for text about a forwarded request (an
// upstream error, a panic): the request's own, or one for the secret alone
// when injection failed before Rewrite compiled it; nil when there is
// nothing to hide.
func (b *Broker) redactorOf(f *forward) *scrub.Scrubber {
	if f == nil {
		return nil
	}
	if f.scrub == nil && len(f.secret) > 0 {
		return b.scrubs.get([][]byte{f.secret})
	}
	return f.scrub
}

// upstreamError answers the agent when forwarding failed. Neither the
// message nor the log line carries a secret: the error text is redacted
// before logging and never sent to the agent.
func (b *Broker) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	f := forwardFrom(r.Context())
	host := ""
	if f != nil {
		host = f.host
	}
	redactor := b.redactorOf(f)
	code, status, msg := CodeUpstreamError, http.StatusBadGateway, "the request to "+host+" failed"
	var (
		unknownCA *x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
		opErr     *net.OpError
	)
	switch {
	case errors.Is(err, errInject):
		code, msg = CodeInjectionFailed, "the credential of service "+f.svc.Name+" could not be attached to this request"
		if f.injErr != nil {
			err = f.injErr
		}
	case errors.Is(err, errEncodedBody):
		code, msg = CodeUnscrubbableEncode, "the upstream answered with a Content-Encoding the broker cannot scrub"
	case errors.Is(err, errUnscrubbableUpgrade):
		code, msg = CodeUnscrubbableEncode, "the upstream switched to a protocol the broker cannot scrub (only WebSocket, without extensions, is relayed)"
	case errors.As(err, &verify), errors.As(err, &unknownCA), errors.As(err, &hostErr), errors.As(err, &invalid):
		msg = "the upstream certificate for " + host + " could not be verified"
	case errors.Is(err, errUpstreamForbidden):
		msg = "the upstream address of " + host + " is in a range the broker does not forward to"
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		code, status, msg = "client_closed", 499, "the agent went away"
	case errors.Is(err, context.DeadlineExceeded):
		status, msg = http.StatusGatewayTimeout, "the upstream "+host+" did not answer in time"
	case errors.As(err, &opErr) && opErr.Op == "dial":
		msg = "could not connect to " + host
	}
	if f != nil {
		f.errCode = code
	}
	text := []byte(err.Error())
	if redactor != nil {
		redactor.Redact(text)
	}
	b.log.Warn("upstream request failed", "host", host, "code", code, "err", string(text))
	if status == 499 {
		return // nobody to answer
	}
	writeAgentError(w, status, code, msg, "")
}

// bufferPool recycles ReverseProxy's copy buffers.
type bufferPool struct{}

// 64 KiB, so the scrubbing reader behind it reads its whole 32 KiB chunk
// (plus the tail it held back) straight into the buffer: two TLS records per
// write to the agent for large bodies (see h1Body.Read and trackedConn.cork).
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

func (bufferPool) Get() []byte  { return *copyBuffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }
