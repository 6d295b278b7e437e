package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"sync"
	"time"

	"github.com/agentvault/agent-vault/internal/harness"
)

// The reference: a minimal Go MITM proxy (CONNECT, TLS termination with a
// certificate issued beforehand, httputil.ReverseProxy to the upstream;
// no policy, no audit, no injection, no scrubbing), run in a process of
// its own exactly where the broker runs, with the same clients and
// upstream. `-reference` measures it next to the broker, so the broker's
// ratios can be read against what any Go proxy costs on the same machine
// in the same run.

const minimalChildFlag = "-minimal-mitm-child"

// runMinimalChild serves the reference proxy: args are the leaf
// certificate and key files, the upstream's CA file and its address.
func runMinimalChild(certFile, keyFile, upCAFile, upAddr string) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "minimal:", err)
		os.Exit(1)
	}
	caPEM, err := os.ReadFile(upCAFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "minimal:", err)
		os.Exit(1)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	var d net.Dialer
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "https"
			pr.Out.URL.Host = pr.In.Host
		},
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, upAddr)
			},
			TLSClientConfig:     &tls.Config{RootCAs: roots},
			ForceAttemptHTTP2:   true,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	inner := &chanListener{conns: make(chan net.Conn, 64)}
	go (&http.Server{Handler: rp}).Serve(inner)
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
	outer := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
		inner.conns <- tls.Server(c, tlsCfg)
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "minimal:", err)
		os.Exit(1)
	}
	go outer.Serve(l)
	fmt.Println(l.Addr().String())
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// chanListener hands the inner HTTP server the connections CONNECT opened.
type chanListener struct {
	conns chan net.Conn
	once  sync.Once
}

func (l *chanListener) Accept() (net.Conn, error) {
	c, ok := <-l.conns
	if !ok {
		return nil, net.ErrClosed
	}
	return c, nil
}
func (l *chanListener) Close() error   { l.once.Do(func() { close(l.conns) }); return nil }
func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// minimalProc is the running reference proxy.
type minimalProc struct {
	*childProc
	caPEM []byte // the root its leaf chains to
}

// startMinimal issues the reference proxy's leaf from a CA of its own and
// starts it in front of the upstream.
func startMinimal(dir, upCAFile, upAddr string) (*minimalProc, error) {
	ca, err := harness.NewTestCA()
	if err != nil {
		return nil, err
	}
	certFile, keyFile, err := issueToFiles(ca, dir, "minimal", apiHost)
	if err != nil {
		return nil, err
	}
	c, err := startChild(minimalChildFlag, certFile, keyFile, upCAFile, upAddr)
	if err != nil {
		return nil, err
	}
	return &minimalProc{c, ca.PEM}, nil
}
