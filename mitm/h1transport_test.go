package mitm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawUpstream is a TLS listener (with the env upstream's certificate) whose
// connections are served by fn, for upstream behaviour net/http's server
// would not produce. It counts connections.
type rawUpstream struct {
	port  int
	conns atomic.Int32
	wg    sync.WaitGroup
	mu    sync.Mutex
	open  []net.Conn
}

func startRawUpstream(t *testing.T, e *env, fn func(c net.Conn, br *bufio.Reader)) *rawUpstream {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: e.up.srv.TLS.Certificates, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{port: l.Addr().(*net.TCPAddr).Port}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u.conns.Add(1)
			u.mu.Lock()
			u.open = append(u.open, c)
			u.mu.Unlock()
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer c.Close()
				fn(c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		u.mu.Lock()
		for _, c := range u.open { // the broker may still pool them
			c.Close()
		}
		u.mu.Unlock()
		u.wg.Wait()
	})
	return u
}

func (e *env) getVia(t *testing.T, c *http.Client, port int, path string) (int, string) {
	t.Helper()
	resp, err := c.Get(fmt.Sprintf("https://api.example.test:%d%s", port, path))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Sequential requests from an HTTP/1.1 agent share one pooled upstream
// connection, and each still carries the credential.
func TestH1TransportPoolsConnections(t *testing.T) {
	e := newEnv(t)
	var auth atomic.Value
	up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			auth.Store(req.Header.Get("Authorization"))
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	c := e.proxyClient(agentToken, false)
	for i := range 20 {
		if code, body := e.getVia(t, c, up.port, "/x"); code != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
	}
	if n := up.conns.Load(); n != 1 {
		t.Fatalf("%d upstream connections for 20 sequential requests, want 1", n)
	}
	if auth.Load() != "Bearer "+sentinel {
		t.Fatal("the credential was not injected on the pooled connection")
	}
}

// An upstream that closes its side of an idle connection (keep-alive
// timeout) costs nothing: the broker notices before reusing it (the peek,
// for connections idle a while) or retries a request without a body on a
// fresh connection (for connections idle a moment).
func TestH1TransportDropsConnectionsClosedWhileIdle(t *testing.T) {
	// peek: a POST is never retried, so only the liveness peek keeps it
	// off the dead connection; retry: a GET skips the peek and is sent
	// again on a new connection
	for _, tc := range []struct {
		name, method string
		peek         time.Duration
	}{{"peek", "POST", 0}, {"retry", "GET", time.Hour}} {
		t.Run(tc.name, func(t *testing.T) {
			old := peekAfter
			peekAfter = tc.peek
			t.Cleanup(func() { peekAfter = old })
			e := newEnv(t)
			up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				// a keep-alive answer, then the server closes anyway
				fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			})
			c := e.proxyClient(agentToken, false)
			for i := range 5 {
				var body io.Reader // a GET without a body is replayable
				if tc.method == "POST" {
					body = strings.NewReader("b")
				}
				req, _ := http.NewRequest(tc.method, fmt.Sprintf("https://api.example.test:%d/x", up.port), body)
				resp, err := c.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(got) != "ok" {
					t.Fatalf("request %d: %d %q", i, resp.StatusCode, got)
				}
				time.Sleep(20 * time.Millisecond) // the close reaches the broker
			}
			if n := up.conns.Load(); n != 5 {
				t.Fatalf("%d upstream connections, want 5 (one per request)", n)
			}
		})
	}
}

// 100 Continue and 103 Early Hints precede the final answer; the agent
// gets the final answer (the hints relayed before it: TestEarlyHintsAreScrubbed).
func TestH1TransportPassesInformationalResponses(t *testing.T) {
	e := newEnv(t)
	up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		fmt.Fprint(c, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone")
	})
	if code, body := e.getVia(t, e.proxyClient(agentToken, false), up.port, "/x"); code != 201 || body != "done" {
		t.Fatalf("got %d %q, want 201 done", code, body)
	}
}

// An upstream that never stops sending 1xx responses gets 502, not a
// broker reading forever: five before the answer pass (as net/http's
// Transport allows), a sixth does not.
func TestH1TransportLimitsInformationalResponses(t *testing.T) {
	e := newEnv(t)
	for hints, want := range map[int]int{5: http.StatusOK, 6: http.StatusBadGateway, 50: http.StatusBadGateway} {
		up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			for range hints {
				if _, err := io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"); err != nil {
					return
				}
			}
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		})
		if code, _ := e.getVia(t, e.proxyClient(agentToken, false), up.port, "/x"); code != want {
			t.Fatalf("got %d after %d informational responses, want %d", code, hints, want)
		}
	}
}

// An HTTP/1.0 agent gets no 1xx response (it could take one for the
// answer), only the answer.
func TestNoInformationalToHTTP10(t *testing.T) {
	e := newEnv(t)
	conn, _ := e.tunnelTo(t, int(e.up.port))
	defer conn.Close()
	fmt.Fprintf(conn, "GET /early HTTP/1.0\r\nHost: api.example.test:%d\r\n\r\n", e.up.port)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("an HTTP/1.0 agent got %d first, want the answer", resp.StatusCode)
	}
}

// A request that is not idempotent is never sent twice, and never skips
// the liveness peek: a pooled connection the upstream closed is noticed
// before the request goes out on it.
func TestH1TransportDoesNotReplayPost(t *testing.T) {
	old := peekAfter
	peekAfter = time.Hour // replayable requests would skip the peek
	t.Cleanup(func() { peekAfter = old })
	e := newEnv(t)
	var posts atomic.Int32
	up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		if req.Method == http.MethodPost {
			posts.Add(1)
		}
		fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") // then close
	})
	c := e.proxyClient(agentToken, false)
	// postTwice sends two POSTs to port, pausing after each (a close the
	// upstream made reaches the broker), and returns their statuses
	postTwice := func(port int) []int {
		var codes []int
		for range 2 {
			resp, err := c.Post(fmt.Sprintf("https://api.example.test:%d/run", port), "", nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes = append(codes, resp.StatusCode)
			time.Sleep(20 * time.Millisecond)
		}
		return codes
	}
	codes := postTwice(up.port)
	if codes[0] != 200 || codes[1] != 200 || posts.Load() != 2 || up.conns.Load() != 2 {
		t.Fatalf("statuses %v, %d POSTs on %d connections; want 200, 200, two POSTs on two connections", codes, posts.Load(), up.conns.Load())
	}

	// An upstream that reads a POST on a pooled connection and goes away
	// without answering: the agent gets 502, and the POST is not sent
	// again on a new connection (where this upstream would answer 200).
	var posts2 atomic.Int32
	up2 := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			if req.Method == http.MethodPost && posts2.Add(1) == 2 {
				return // read, then gone without an answer
			}
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	codes = postTwice(up2.port)
	if codes[0] != 200 || codes[1] != http.StatusBadGateway || posts2.Load() != 2 || up2.conns.Load() != 1 {
		t.Fatalf("statuses %v, %d POSTs on %d connections; want 200, 502, two POSTs on one connection", codes, posts2.Load(), up2.conns.Load())
	}
}

// A response header beyond 1 MiB is refused (502), never buffered whole.
func TestH1TransportLimitsResponseHeader(t *testing.T) {
	e := newEnv(t)
	up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		fmt.Fprint(c, "HTTP/1.1 200 OK\r\n")
		line := "X-Big: " + strings.Repeat("a", 8000) + "\r\n"
		for range 200 { // 1.6 MB of header
			if _, err := io.WriteString(c, line); err != nil {
				return
			}
		}
		fmt.Fprint(c, "Content-Length: 0\r\n\r\n")
	})
	if code, _ := e.getVia(t, e.proxyClient(agentToken, false), up.port, "/x"); code != http.StatusBadGateway {
		t.Fatalf("got %d for a 1.6 MB response header, want 502", code)
	}
}

// Request bodies: a known length rides the fast path, a chunked upload of
// unknown length goes through net/http's Transport; both arrive whole.
func TestH1TransportRequestBodies(t *testing.T) {
	e := newEnv(t)
	var mu sync.Mutex
	var got []string
	up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			b, _ := io.ReadAll(req.Body)
			mu.Lock()
			got = append(got, fmt.Sprintf("%d:%s", req.ContentLength, b))
			mu.Unlock()
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	c := e.proxyClient(agentToken, false)
	url := fmt.Sprintf("https://api.example.test:%d/upload", up.port)
	resp, err := c.Post(url, "text/plain", strings.NewReader("known"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	pr, pw := io.Pipe()
	go func() { pw.Write([]byte("chunk")); pw.Write([]byte("ed")); pw.Close() }()
	resp, err = c.Post(url, "text/plain", pr) // unknown length: chunked
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0] != "5:known" || got[1] != "-1:chunked" {
		t.Fatalf("upstream received %q", got)
	}
}

// A large body the upstream cuts short reaches the agent cut short too
// (never as a complete response), through the full-buffer reads and the
// corked writes large bodies take.
func TestH1TransportTruncatedLargeBody(t *testing.T) {
	e := newEnv(t)
	up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", 2<<20)
		c.Write(make([]byte, 3<<19)) // 1.5 MiB of the 2 promised, then close
	})
	resp, err := e.proxyClient(agentToken, false).Get(fmt.Sprintf("https://api.example.test:%d/big", up.port))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil || n >= 2<<20 {
		t.Fatalf("read %d bytes, err %v; want the cut to show", n, err)
	}
}

// A 103 Early Hints response echoing the credential reaches the agent
// scrubbed, on both upstream paths (HTTP/2 agents take net/http's
// Transport, HTTP/1.1 agents the pooled h1 transport; both relay 1xx
// responses).
func TestEarlyHintsAreScrubbed(t *testing.T) {
	for _, h2 := range []bool{true, false} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			e := newEnv(t)
			var hints []http.Header
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				hints = append(hints, http.Header(h).Clone())
				return nil
			}}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", e.url("api.example.test", "/early"), nil)
			resp, err := e.proxyClient(agentToken, h2).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			for _, h := range hints {
				if strings.Contains(fmt.Sprint(h), sentinel) || h.Get("Alt-Svc") != "" {
					t.Fatalf("a 1xx response reached the agent with %v", h)
				}
			}
			if len(hints) == 0 {
				t.Fatal("no 1xx reached the agent: the relay this test is about did not run")
			}
		})
	}
}

// An agent that leaves in the middle of an endless response (a stream of
// events) gets its upstream connection closed, rather than drained: the
// broker stops reading it at once. HTTP/1.1 agents take the pooled
// transport (whose body close drained before closing); HTTP/2 agents
// net/http's.
func TestAgentLeavesEndlessStream(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			e := newEnv(t)
			gone := make(chan struct{}, 1)
			up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
				for {
					if _, err := fmt.Fprintf(c, "%x\r\n%s\r\n", 12, "data: tick\n\n"); err != nil {
						gone <- struct{}{}
						return
					}
					time.Sleep(5 * time.Millisecond)
				}
			})
			resp, err := e.proxyClient(agentToken, h2).Get(fmt.Sprintf("https://api.example.test:%d/events", up.port))
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 12)
			if _, err := io.ReadFull(resp.Body, buf); err != nil {
				t.Fatal(err)
			}
			resp.Body.Close() // the agent leaves (an HTTP/2 agent: the stream)
			select {
			case <-gone:
			case <-time.After(10 * time.Second):
				t.Fatal("the upstream connection is still being read 10 s after the agent left")
			}
		})
	}
}

// A large upload from an HTTP/2 agent reaches an HTTP/2 upstream whole, in
// DATA frames that fill TLS records (recordSized): read as the agent's data
// came, every 16 KiB frame was 9 bytes over the record limit and left a
// record of its own carrying those 9 bytes. One from an HTTP/1.1 agent,
// with a length or chunked, goes over HTTP/1.1 although the upstream
// offers HTTP/2 (no flow-control round trips, no frame headers), chunks of
// a streamed one filling TLS records.
func TestLargeUploads(t *testing.T) {
	e := newEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var tiny atomic.Int64 // application-data records of at most 32 bytes from the broker
	tl := tls.NewListener(&recordCountingListener{Listener: l, tiny: &tiny},
		&tls.Config{Certificates: e.up.srv.TLS.Certificates, NextProtos: []string{"h2", "http/1.1"}})
	type seen struct {
		proto     string
		n         int64
		sum       [32]byte
		readAhead int // bodies the broker read ahead once the first MiB was in
	}
	got := make(chan seen, 1)
	srv := &http.Server{HTTP2: &http.HTTP2Config{MaxReadFrameSize: 16 << 10}, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.CopyN(h, r.Body, 1<<20)
		readAhead := len(uploadSlots)
		m, _ := io.Copy(h, r.Body)
		n += m
		var s seen
		s.proto, s.n, s.readAhead = r.Proto, n, readAhead
		copy(s.sum[:], h.Sum(nil))
		got <- s
	})}
	go srv.Serve(tl)
	t.Cleanup(func() { srv.Close() })
	url := fmt.Sprintf("https://api.example.test:%d/upload", l.Addr().(*net.TCPAddr).Port)

	block := make([]byte, 4<<20)
	rand.Read(block)
	var yields atomic.Int64
	count := func() { yields.Add(1) }
	yieldHook.Store(&count)
	t.Cleanup(func() { yieldHook.Store(nil) })
	waitFor(t, "earlier tests' read-ahead slots", func() bool { return len(uploadSlots) == 0 })
	for _, c := range []struct {
		name      string
		agentH2   bool
		chunked   bool
		blocks    int // the body is block this many times
		wantProto string
		readAhead int // -1: not asked (a 4 MiB body may be all in socket buffers by then)
	}{
		{"h2 agent", true, false, 1, "HTTP/2.0", 0},
		{"h1 agent", false, false, 1, "HTTP/1.1", -1},
		{"h1 agent, chunked", false, true, 1, "HTTP/1.1", 0},
		// long enough to give way to the scheduler, and to be read ahead
		// (readAheadUpload) while the upstream reads
		{"h1 agent, 64 MiB", false, false, 16, "HTTP/1.1", 1},
	} {
		tiny.Store(0)
		yields.Store(0)
		parts := make([]io.Reader, c.blocks)
		want := sha256.New()
		for i := range parts {
			parts[i] = bytes.NewReader(block)
			want.Write(block)
		}
		size := int64(c.blocks * len(block))
		req, err := http.NewRequest(http.MethodPost, url, io.MultiReader(parts...))
		if err != nil {
			t.Fatal(err)
		}
		if !c.chunked {
			req.ContentLength = size
		}
		start := time.Now()
		resp, err := e.proxyClient(agentToken, c.agentH2).Do(req)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		resp.Body.Close()
		took := time.Since(start)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", c.name, resp.StatusCode)
		}
		s := <-got // the handler ran: it answered
		intact := s.sum == [32]byte(want.Sum(nil))
		if s.proto != c.wantProto || s.n != size || !intact {
			t.Fatalf("%s: the upstream read %d of %d bytes over %s (want %s), intact: %v",
				c.name, s.n, size, s.proto, c.wantProto, intact)
		}
		if c.readAhead >= 0 && s.readAhead != c.readAhead {
			t.Errorf("%s: %d bodies read ahead during the upload, want %d", c.name, s.readAhead, c.readAhead)
		}
		waitFor(t, "the read-ahead slot", func() bool { return len(prefetchSlots) == 0 })
		// an HTTP/1.1 agent's long upload gives way as a download does
		// (see TestLargeDownloadBoundedMemory); one faster than four
		// periods proves nothing either way
		t.Logf("%s: %d MiB in %v, %d yields", c.name, size>>20, took, yields.Load())
		if c.blocks > 1 && took > 4*yieldAfter && yields.Load() == 0 {
			t.Errorf("%s: the upload never gave way in %v", c.name, took)
		}
		// 256 DATA frames over HTTP/2 (of at most 16 KiB: the upstream
		// asks for that size, as the protocol's default); the control
		// frames (SETTINGS, its ACK, WINDOW_UPDATE) make a few small
		// records of their own. A chunked body over HTTP/1.1 left one
		// small record per 32 KiB chunk (129 here) before chunkPayload:
		// the closing CRLF, alone or with the last bytes of the chunk.
		if n := tiny.Load(); n > 16 {
			t.Errorf("%s: %d records of at most 32 bytes for a 4 MiB upload: frames or chunks do not fill TLS records", c.name, n)
		}
	}
}

// recordCountingListener counts, per accepted connection, the TLS
// application-data records of at most 32 bytes it reads.
type recordCountingListener struct {
	net.Listener
	tiny *atomic.Int64
}

func (l *recordCountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &recordCountingConn{Conn: c, tiny: l.tiny}, nil
}

// recordCountingConn follows the TLS record layer in what it reads: hdr
// collects a record's 5-byte header, left is what remains of its body.
type recordCountingConn struct {
	net.Conn
	tiny *atomic.Int64
	hdr  []byte
	left int
}

func (c *recordCountingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	for b := p[:n]; len(b) > 0; {
		if c.left > 0 {
			k := min(c.left, len(b))
			c.left -= k
			b = b[k:]
			continue
		}
		k := min(5-len(c.hdr), len(b))
		c.hdr = append(c.hdr, b[:k]...)
		b = b[k:]
		if len(c.hdr) == 5 {
			c.left = int(c.hdr[3])<<8 | int(c.hdr[4])
			if c.hdr[0] == 23 && c.left <= 32 {
				c.tiny.Add(1)
			}
			c.hdr = c.hdr[:0]
		}
	}
	return n, err
}

// A large body of known length is read ahead of the handler (prefetcher):
// the credential is scrubbed where it straddles the hand-offs (64 KiB copy
// buffers, 512 KiB chunks), every other byte arrives as sent, the
// connection is pooled for the next request, and an agent that leaves part
// way gives the slot and the connection back.
func TestLargeBodyReadAhead(t *testing.T) {
	e := newEnv(t)
	waitFor(t, "earlier tests' slots", func() bool { return len(prefetchSlots) == 0 })
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
	waitFor(t, "the read-ahead slot", func() bool { return len(prefetchSlots) == 0 })
}

// With every read-ahead slot taken (prefetchMax large bodies in flight),
// large downloads are read in their handlers, concurrently, and arrive
// whole; the slots are left as they were.
func TestLargeDownloadsWithoutASlot(t *testing.T) {
	e := newEnv(t)
	waitFor(t, "earlier tests' slots", func() bool { return len(prefetchSlots) == 0 })
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

// An upstream that answers a large upload part way (413, then closes): the
// agent gets the answer or a broken write, and the upload's read-ahead
// ends and gives its slot back.
func TestLargeUploadAnsweredEarly(t *testing.T) {
	e := newEnv(t)
	waitFor(t, "earlier tests' slots", func() bool { return len(uploadSlots) == 0 })
	readAhead := make(chan int, 1)
	up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.CopyN(io.Discard, req.Body, 2<<20)
		readAhead <- len(uploadSlots)
		io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	})
	size := int64(64 << 20)
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("https://api.example.test:%d/up", up.port), io.LimitReader(zeros{}, size))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = size
	resp, err := e.proxyClient(agentToken, false).Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != 413 && resp.StatusCode != 502 {
			t.Fatalf("status %d, want the upstream's 413 (or 502 if the write broke first)", resp.StatusCode)
		}
	}
	if n := within(t, readAhead, "the upstream to read 2 MiB"); n != 1 {
		t.Fatalf("%d uploads read ahead, want 1", n)
	}
	waitFor(t, "the read-ahead slot", func() bool { return len(uploadSlots) == 0 })
}

// The Transport may close an upload's body while its writer goroutine
// waits in Read for the agent's next bytes: Close does not wait for them,
// and the Read returns.
func TestReadAheadUploadCloseDoesNotWaitForTheAgent(t *testing.T) {
	waitFor(t, "earlier tests' slots", func() bool { return len(uploadSlots) == 0 })
	agent, agentW := io.Pipe()
	defer agent.Close()
	u := newReadAheadUpload(agent)
	go agentW.Write(make([]byte, 100)) // a little, then a pause
	readDone := make(chan error, 1)
	go func() {
		p := make([]byte, 1<<20)
		for {
			if _, err := u.Read(p); err != nil {
				readDone <- err
				return
			}
		}
	}()
	waitFor(t, "the read ahead to begin", func() bool { return len(uploadSlots) == 1 })
	time.Sleep(10 * time.Millisecond) // the reader waits for a chunk by now, or soon
	closed := make(chan error, 1)
	go func() { closed <- u.Close() }()
	within(t, closed, "Close while a Read waits for the agent")
	if err := within(t, readDone, "the waiting Read to return"); err != errReadAheadAborted && err != errUploadClosed {
		t.Fatalf("the waiting Read returned %v", err)
	}
	agent.Close() // as the connection's end ends the goroutine's own read
	waitFor(t, "the slot back", func() bool { return len(uploadSlots) == 0 })
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// An agent's "Expect: 100-continue" on a large upload waits for the
// upstream's answer: an upstream that refuses at once (401, no 100) is
// relayed, and the broker never asks the agent for its body by starting to
// read it ahead.
func TestLargeUploadExpectContinueRefused(t *testing.T) {
	e := newEnv(t)
	up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno")
	})
	conn, _ := e.tunnelTo(t, up.port)
	defer conn.Close()
	fmt.Fprintf(conn, "POST /up HTTP/1.1\r\nHost: api.example.test:%d\r\nContent-Length: %d\r\nExpect: 100-continue\r\n\r\n", up.port, 8<<20)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("the agent got %d first, want the upstream's 401 (a 100 would ask for the body)", resp.StatusCode)
	}
}
