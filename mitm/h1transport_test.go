package mitm

import (
	"bufio"
	"context"
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
