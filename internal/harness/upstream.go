package harness

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Received is what the upstream saw of one request.
type Received struct {
	Method string      `json:"method"`
	Host   string      `json:"host"`
	Path   string      `json:"path"`
	Query  string      `json:"query"`
	Header http.Header `json:"header"`
	Body   string      `json:"body"`
	Proto  string      `json:"proto"`
	Remote string      `json:"remote"`
}

// Upstream is a TLS server playing a public API. It echoes every request as
// JSON and records it. Special paths:
//
//	/bytes?n=N   streams N bytes (no echo), for downloads
//	/upload      reads the body to its end and answers {"bytes":N}, for uploads
//	/sse?n=N     N server-sent events, 50 ms apart
//	/small       a fixed ~100-byte body, for benchmarks
//	/redirect    a 302 to /echo (never followed by the broker)
type Upstream struct {
	Addr     string // host:port it listens on
	server   *http.Server
	listener net.Listener
	mu       sync.Mutex
	received []Received
	Record   bool // keep a log of requests (default true)
}

// StartUpstream serves on addr (e.g. "127.0.0.1:0") with a certificate for
// names, signed by ca.
func StartUpstream(ca *TestCA, addr string, names ...string) (*Upstream, error) {
	cert, err := ca.Issue(names...)
	if err != nil {
		return nil, err
	}
	return StartUpstreamCert(cert, addr)
}

// StartUpstreamCert serves on addr with the given certificate (for an
// upstream in a process of its own, handed a certificate Issue made).
func StartUpstreamCert(cert tls.Certificate, addr string) (*Upstream, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("upstream listen: %w", err)
	}
	u := &Upstream{Addr: l.Addr().String(), listener: l, Record: true}
	u.server = &http.Server{
		Handler:           u,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
	}
	go u.server.ServeTLS(l, "", "")
	return u, nil
}

var small = []byte(`{"id":"cmpl-1","object":"chat.completion","model":"bench","choices":[{"text":"ok"}],"usage":{}}` + "\n")

func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/small":
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(small)
		return
	case "/bytes":
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		buf := make([]byte, 64<<10)
		for i := range buf {
			buf[i] = 'a' + byte(i%26)
		}
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
		return
	case "/upload":
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"bytes\":%d}\n", n)
		return
	case "/sse":
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.Header().Set("Content-Type", "text/event-stream")
		fl, _ := w.(http.Flusher)
		for i := 0; i < n; i++ {
			fmt.Fprintf(w, "data: event %d at %d\n\n", i, time.Now().UnixMilli())
			if fl != nil {
				fl.Flush()
			}
			time.Sleep(50 * time.Millisecond)
		}
		return
	case "/redirect":
		http.Redirect(w, r, "/echo", http.StatusFound)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	rec := Received{Method: r.Method, Host: r.Host, Path: r.URL.Path, Query: r.URL.RawQuery,
		Header: r.Header.Clone(), Body: string(body), Proto: r.Proto, Remote: r.RemoteAddr}
	if u.Record {
		u.mu.Lock()
		u.received = append(u.received, rec)
		u.mu.Unlock()
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(rec)
}

// Received returns the requests recorded so far.
func (u *Upstream) Received() []Received {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]Received(nil), u.received...)
}

// Close stops the server.
func (u *Upstream) Close() error { return u.server.Close() }
