package mitm

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// readResponses reads up to max responses, until none comes within wait.
func readResponses(t *testing.T, c net.Conn, br *bufio.Reader, max int, wait time.Duration) (statuses []int, bodies []string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	for range max {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			break
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		statuses, bodies = append(statuses, resp.StatusCode), append(bodies, string(b))
	}
	return statuses, bodies
}

// The checks net/http's server makes beyond the parser hold on serveH1's
// connections.
func TestH1ServerRefusals(t *testing.T) {
	for _, c := range []struct {
		name, raw string
		want      int
	}{
		{"no Host on HTTP/1.1", "GET /echo HTTP/1.1\r\n\r\n", 400},
		{"bad Host", "GET /echo HTTP/1.1\r\nHost: api example\r\n\r\n", 400},
		{"bad header value", "GET /echo HTTP/1.1\r\nHost: api.example.test\r\nX-A: a\x00b\r\n\r\n", 400},
		{"bad header name", "GET /echo HTTP/1.1\r\nHost: api.example.test\r\nX A: b\r\n\r\n", 400}, // passes the parser: checkH1Request refuses it
		{"odd Expect", "GET /echo HTTP/1.1\r\nHost: api.example.test\r\nExpect: 200-ok\r\n\r\n", 417},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505},
		// oversized headers are refused before anything is decided
		{"header too large", "GET /echo HTTP/1.1\r\nHost: api.example.test\r\nX-Big: " + strings.Repeat("a", 70<<10) + "\r\n\r\n", 431},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			tc, br := e.tunnel(t)
			io.WriteString(tc, c.raw)
			statuses, _ := readResponses(t, tc, br, 2, 2*time.Second)
			if len(statuses) != 1 || statuses[0] != c.want {
				t.Fatalf("statuses %v, want [%d] and the connection closed", statuses, c.want)
			}
			if got := len(e.up.received()); got != 0 {
				t.Fatalf("the upstream received %d requests", got)
			}
		})
	}
}

// Requests written back to back are answered in order on one connection,
// each with its own credential and audit row.
func TestH1ServerPipelining(t *testing.T) {
	e := newEnv(t)
	tc, br := e.tunnel(t)
	io.WriteString(tc, "GET /echo?n=1 HTTP/1.1\r\nHost: api.example.test\r\n\r\n"+
		"POST /echo?n=2 HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 5\r\n\r\nhello"+
		"GET /echo?n=3 HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
	statuses, bodies := readResponses(t, tc, br, 3, 2*time.Second)
	if fmt.Sprint(statuses) != "[200 200 200]" || !strings.Contains(bodies[1], `"body":"hello"`) {
		t.Fatalf("statuses %v, bodies %q", statuses, bodies)
	}
	got := e.up.received()
	if len(got) != 3 || got[0].Query != "n=1" || got[1].Query != "n=2" || got[2].Query != "n=3" {
		t.Fatalf("upstream received %+v", got)
	}
	if n := len(e.sink.find(ActionRequest, "allow")); n != 3 {
		t.Fatalf("%d intent rows, want 3", n)
	}
}

// A body sent with "Expect: 100-continue" is asked for with "100 Continue"
// and forwarded whole.
func TestH1ServerExpectContinue(t *testing.T) {
	e := newEnv(t)
	tc, br := e.tunnel(t)
	io.WriteString(tc, "POST /echo HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
		t.Fatalf("first line %q (%v), want 100 Continue", line, err)
	}
	br.ReadString('\n') // the blank line ending it
	io.WriteString(tc, "ping")
	statuses, bodies := readResponses(t, tc, br, 1, 2*time.Second)
	if len(statuses) != 1 || statuses[0] != 200 || !strings.Contains(bodies[0], `"body":"ping"`) {
		t.Fatalf("statuses %v, bodies %q", statuses, bodies)
	}
}

// A body the handler never read is skipped when small (the connection
// carries the next request) and ends the connection when large, so it is
// never read as requests.
func TestH1ServerUnreadBody(t *testing.T) {
	e := newEnv(t)
	denied := "POST /x HTTP/1.1\r\nHost: nocred.example.test\r\nContent-Length: %d\r\n\r\n"
	// nocred has no credential value: 403 before the body is read; the
	// tunnel is for api.example.test, so use the transparent listener
	e.setOrigin(e.up.port)
	for _, c := range []struct {
		size     int
		wantNext bool
	}{{10, true}, {1 << 20, false}} {
		t.Run(fmt.Sprint(c.size), func(t *testing.T) {
			tc, br := e.transparentTLS(t, "nocred.example.test")
			smuggled := "GET /smuggled HTTP/1.1\r\nHost: nocred.example.test\r\n\r\n"
			body := strings.Repeat("G", c.size)
			if c.size > len(smuggled) {
				body = body[len(smuggled):] + smuggled
			}
			go func() {
				fmt.Fprintf(tc, denied, c.size)
				io.WriteString(tc, body)
				io.WriteString(tc, "GET /next HTTP/1.1\r\nHost: nocred.example.test\r\n\r\n")
			}()
			statuses, _ := readResponses(t, tc, br, 3, 2*time.Second)
			want := "[403]"
			if c.wantNext {
				want = "[403 403]"
			}
			if fmt.Sprint(statuses) != want {
				t.Fatalf("statuses %v, want %s (the body must never be read as a request)", statuses, want)
			}
		})
	}
}

// A response of unknown length reaches an HTTP/1.1 agent chunked, whole;
// an HTTP/1.0 agent gets it delimited by the close. An HTTP/1.0 agent that
// asks for keep-alive keeps its connection after answers of known length.
func TestH1ServerFraming(t *testing.T) {
	e := newEnv(t)
	tc, br := e.tunnel(t)
	io.WriteString(tc, "GET /sse HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("transfer encoding %v, want chunked", resp.TransferEncoding)
	}
	first := make([]byte, len("data: one\n\n"))
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "data: one\n\n" {
		t.Fatalf("first event %q (%v)", first, err)
	}
	close(e.up.release)
	rest, _ := io.ReadAll(resp.Body)
	if string(rest) != "data: two\n\n" {
		t.Fatalf("second event %q", rest)
	}

	tc2, br2 := e.tunnel(t)
	io.WriteString(tc2, "GET /echo HTTP/1.0\r\nHost: api.example.test\r\n\r\n")
	tc2.SetReadDeadline(time.Now().Add(5 * time.Second))
	raw, _ := io.ReadAll(br2)
	if !strings.HasPrefix(string(raw), "HTTP/1.1 200 ") || !strings.Contains(string(raw), "Connection: close") ||
		!strings.Contains(string(raw), `"method":"GET"`) {
		t.Fatalf("HTTP/1.0 answer %q", raw)
	}

	tc3, br3 := e.tunnel(t)
	tc3.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range 2 {
		io.WriteString(tc3, "GET /echo HTTP/1.0\r\nHost: api.example.test\r\nConnection: keep-alive\r\n\r\n")
		resp, err := http.ReadResponse(br3, nil)
		if err != nil {
			t.Fatalf("HTTP/1.0 keep-alive request %d: %v", i, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.ContentLength != int64(len(body)) || resp.Header.Get("Connection") != "keep-alive" ||
			!strings.Contains(string(body), `"method":"GET"`) {
			t.Fatalf("HTTP/1.0 keep-alive answer %d: %v, Content-Length %d, Connection %q, %q (%v)",
				i, resp.Status, resp.ContentLength, resp.Header.Get("Connection"), body, err)
		}
	}
	// an answer of unknown length still ends with the connection
	io.WriteString(tc3, "GET /sse HTTP/1.0\r\nHost: api.example.test\r\nConnection: keep-alive\r\n\r\n")
	raw, _ = io.ReadAll(br3)
	if !strings.Contains(string(raw), "Connection: close") || !strings.HasSuffix(string(raw), "data: two\n\n") {
		t.Fatalf("HTTP/1.0 keep-alive, unknown length: %q", raw)
	}
}

// Shutdown lets a request in flight on an HTTP/1.1 connection finish, and
// closes the connections that wait for their next request.
func TestH1ServerShutdownIsGraceful(t *testing.T) {
	e := newEnv(t)
	idle, idleBR := e.tunnel(t)
	io.WriteString(idle, "GET /echo HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
	if s, _ := readResponses(t, idle, idleBR, 1, 2*time.Second); fmt.Sprint(s) != "[200]" {
		t.Fatalf("idle connection's first answer %v", s)
	}
	busy, busyBR := e.tunnel(t)
	io.WriteString(busy, "GET /sse HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
	busy.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(busyBR, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- e.b.Shutdown(ctx)
	}()
	// the idle connection is closed at once
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idleBR.ReadByte(); err == nil {
		t.Fatal("the idle connection got bytes during Shutdown, want a close")
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) while a response was streaming", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(e.up.release)
	body, _ := io.ReadAll(resp.Body)
	if !strings.HasSuffix(string(body), "data: two\n\n") {
		t.Fatalf("the streaming response was cut: %q", body)
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// transparentTLS opens a TLS connection to the transparent listener with
// the given SNI, as a redirected HTTP/1.1 agent would.
func (e *env) transparentTLS(t *testing.T, sni string) (*tls.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", e.transAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return e.tlsOver(t, c, sni)
}

// A request still running when its agent disconnects is canceled: the
// broker gives up its upstream call soon after, rather than holding it
// (and the credential's quota) until the upstream answers.
func TestH1ServerCancelsOnDisconnect(t *testing.T) {
	old := disconnectAfter
	disconnectAfter = 50 * time.Millisecond
	t.Cleanup(func() { disconnectAfter = old })
	e := newEnv(t)
	upClosed := make(chan time.Time, 1)
	up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		// a slow answer: wait for the broker to give up (or 10 s)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		br.ReadByte()
		upClosed <- time.Now()
	})
	tc, _ := e.tunnelTo(t, up.port)
	io.WriteString(tc, "GET /slow HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
	time.Sleep(100 * time.Millisecond)
	left := time.Now()
	tc.Close()
	select {
	case at := <-upClosed:
		if d := at.Sub(left); d > 5*time.Second {
			t.Fatalf("the upstream call ended %v after the agent left", d)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the upstream call was never canceled")
	}
	waitFor(t, "the aborted request's completion row", func() bool {
		for _, ev := range e.sink.all() {
			if ev.Action == ActionRequestComplete && ev.Path == "/slow" {
				return true
			}
		}
		return false
	})
}

// A request that outlives disconnectAfter on a connection the agent keeps
// open is not disturbed, and the connection carries the next request.
func TestH1ServerSlowRequestKeepsConnection(t *testing.T) {
	old := disconnectAfter
	disconnectAfter = 20 * time.Millisecond
	t.Cleanup(func() { disconnectAfter = old })
	e := newEnv(t)
	up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/slow" {
				time.Sleep(200 * time.Millisecond)
			}
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	tc, br := e.tunnelTo(t, up.port)
	io.WriteString(tc, "GET /slow HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
	time.Sleep(50 * time.Millisecond) // the watch is on; a pipelined request arrives during it
	io.WriteString(tc, "GET /next HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
	statuses, bodies := readResponses(t, tc, br, 2, 2*time.Second)
	if fmt.Sprint(statuses) != "[200 200]" || bodies[0] != "ok" || bodies[1] != "ok" {
		t.Fatalf("statuses %v bodies %q", statuses, bodies)
	}
}

// A chunked upload with Expect: 100-continue goes through net/http's
// Transport, whose reader relays the upstream's 100 while its writer, on
// the first read of the body, would send the broker's own: the agent gets
// one 100 Continue, then the answer (the two writers once raced on the
// connection's buffer, and the agent saw three 100s and a cut answer).
func TestExpectContinueOnceWhenTheUpstreamSendsIt(t *testing.T) {
	e := newEnv(t)
	up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
		io.Copy(io.Discard, req.Body)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
	})
	for i := 0; i < 10; i++ {
		conn, _ := e.tunnelTo(t, up.port)
		fmt.Fprintf(conn, "POST /up HTTP/1.1\r\nHost: api.example.test:%d\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n", up.port)
		br := bufio.NewReader(conn)
		var got []int
		for len(got) < 5 {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("try %d: after %v: %v", i, got, err)
			}
			got = append(got, resp.StatusCode)
			if resp.StatusCode == 100 && len(got) == 1 {
				io.WriteString(conn, "5\r\nhello\r\n0\r\n\r\n")
			}
			if resp.StatusCode >= 200 {
				body, err := io.ReadAll(resp.Body)
				if err != nil || string(body) != "ok" {
					t.Fatalf("try %d: body %q, %v", i, body, err)
				}
				break
			}
		}
		if len(got) != 2 || got[0] != 100 || got[1] != 200 {
			t.Fatalf("try %d: the agent got %v, want [100 200]", i, got)
		}
		conn.Close()
	}
}

// A request body that was not read to its end may still be read by net/http's
// Transport from its own goroutine (a stalled chunked upload the upstream
// answered without reading): the connection's reader is then never given
// back to the pool, where another connection would take it while that
// goroutine still writes into it.
func TestH1ReaderNotPooledWhileTheBodyMayBeRead(t *testing.T) {
	e := newEnv(t)
	up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		time.Sleep(300 * time.Millisecond)
	})
	var mu sync.Mutex
	var put []*bufio.Reader
	h1ReaderPut = func(br *bufio.Reader) { mu.Lock(); put = append(put, br); mu.Unlock() }
	defer func() { h1ReaderPut = nil }()
	conn, _ := e.tunnelTo(t, up.port)
	defer conn.Close()
	// a chunked upload that stalls after its first chunk
	fmt.Fprintf(conn, "POST /up HTTP/1.1\r\nHost: api.example.test:%d\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n", up.port)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	time.Sleep(200 * time.Millisecond) // serveH1 has returned
	mu.Lock()
	defer mu.Unlock()
	if len(put) != 0 {
		t.Fatalf("%d readers went back to the pool while the upload could still be read", len(put))
	}
}

// Trailers reach the agent, on both agent protocols, with an echoed
// credential redacted (trailerScrubber) and each value on one line.
func TestTrailersScrubbed(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			e := newEnv(t)
			up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nTrailer: X-Echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Echo: %s\r\n\r\n", req.Header.Get("Authorization"))
			})
			resp, err := e.proxyClient(agentToken, h2).Get(fmt.Sprintf("https://api.example.test:%d/t", up.port))
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(body) != "hello" {
				t.Fatalf("body %q, %v", body, err)
			}
			echo := resp.Trailer.Get("X-Echo")
			if !strings.HasPrefix(echo, "Bearer [REDACTED") || strings.Contains(echo, sentinel) {
				t.Fatalf("trailer X-Echo = %q, want the credential redacted", echo)
			}
		})
	}
}
