package mitm

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

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
	slotsFree(t, uploadSlots)
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
		slotsFree(t, uploadSlots)
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

// An upstream that answers a large upload part way (413, then closes): the
// agent gets the answer or a broken write, and the upload's read-ahead
// ends and gives its slot back.
func TestLargeUploadAnsweredEarly(t *testing.T) {
	e := newEnv(t)
	slotsFree(t, uploadSlots)
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
	slotsFree(t, uploadSlots)
}

// The Transport may close an upload's body while its writer goroutine
// waits in Read for the agent's next bytes: Close does not wait for them,
// and the Read returns.
func TestReadAheadUploadCloseDoesNotWaitForTheAgent(t *testing.T) {
	slotsFree(t, uploadSlots)
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
	slotsFree(t, uploadSlots)
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
