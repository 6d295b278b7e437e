package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// sample is the outcome of one or more load runs.
type sample struct {
	n        int64
	elapsed  time.Duration
	lat      []time.Duration
	failures int64
}

func (s *sample) rps() float64 { return float64(s.n) / s.elapsed.Seconds() }

func (s *sample) quantile(q float64) time.Duration {
	if len(s.lat) == 0 {
		return 0
	}
	slices.Sort(s.lat)
	return s.lat[int(q*float64(len(s.lat)-1))]
}

func (s *sample) add(o sample) {
	s.n += o.n
	s.elapsed += o.elapsed
	s.lat = append(s.lat, o.lat...)
	s.failures += o.failures
}

// client builds an HTTP client that reaches the upstream either directly or
// through the broker's explicit proxy.
// route is the way a client reaches the upstream.
type route int

const (
	routeDirect  route = iota
	routeBroker        // through agent-vault's explicit proxy
	routeMinimal       // through the reference minimal MITM (-reference)
)

func (e *env) client(r route, h2, fresh bool, conc int) *http.Client {
	tr := &http.Transport{
		MaxIdleConns:        conc * 2,
		MaxIdleConnsPerHost: conc * 2,
		DisableKeepAlives:   fresh,
		ForceAttemptHTTP2:   h2,
		IdleConnTimeout:     time.Minute,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	switch r {
	case routeBroker:
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(e.brokerCA)
		tr.TLSClientConfig = &tls.Config{RootCAs: roots}
		tr.Proxy = http.ProxyURL(&url.URL{Scheme: "http", User: url.UserPassword("agent", e.token), Host: e.srv.ProxyAddr})
	case routeMinimal:
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(e.minimal.caPEM)
		tr.TLSClientConfig = &tls.Config{RootCAs: roots}
		tr.Proxy = http.ProxyURL(&url.URL{Scheme: "http", Host: e.minimal.Addr})
	default:
		tr.TLSClientConfig = &tls.Config{RootCAs: e.ca.Pool()}
		var d net.Dialer
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, e.up.Addr)
		}
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func (e *env) url(path string) string { return "https://" + apiHost + ":" + e.port + path }

// load runs conc workers issuing GET path for d and returns what they did.
func load(c *http.Client, target string, conc int, d time.Duration) sample {
	var wg sync.WaitGroup
	var n, fails atomic.Int64
	lats := make([][]time.Duration, conc)
	start := time.Now()
	deadline := start.Add(d)
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for time.Now().Before(deadline) {
				t0 := time.Now()
				resp, err := c.Get(target)
				if err != nil {
					fails.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					fails.Add(1)
					continue
				}
				lats[w] = append(lats[w], time.Since(t0))
				n.Add(1)
			}
		}(w)
	}
	wg.Wait()
	s := sample{n: n.Load(), elapsed: time.Since(start), failures: fails.Load()}
	for _, l := range lats {
		s.lat = append(s.lat, l...)
	}
	return s
}

// cpuUse is the CPU time processes spent during runs.
type cpuUse struct {
	broker   time.Duration // the agent-vault process
	client   time.Duration // this process: the clients
	upstream time.Duration // the upstream child
}

// driver is the clients' and the upstream's CPU together.
func (c cpuUse) driver() time.Duration { return c.client + c.upstream }

func (c *cpuUse) add(o cpuUse) {
	c.broker += o.broker
	c.client += o.client
	c.upstream += o.upstream
}

// measureCPU runs fn and returns the CPU time the broker, this process
// and the upstream used meanwhile (zero if /proc cannot tell).
func (e *env) measureCPU(fn func()) cpuUse {
	pids := [3]int{e.srv.Pid(), os.Getpid(), e.up.Pid()}
	var t0, t1 [3]time.Duration
	var err error
	for i, p := range pids {
		if t0[i], err = cpuTime(p); err != nil {
			fn()
			return cpuUse{}
		}
	}
	fn()
	for i, p := range pids {
		if t1[i], err = cpuTime(p); err != nil {
			return cpuUse{}
		}
	}
	return cpuUse{broker: t1[0] - t0[0], client: t1[1] - t0[1], upstream: t1[2] - t0[2]}
}

// compareSmall interleaves direct and brokered runs of small requests. Both
// clients have the same transport settings; only the route differs.
func (e *env) compareSmall(name string, via route, conc int, h2, fresh bool, round time.Duration, rounds int) (broker, direct sample, bcpu, dcpu cpuUse, err error) {
	bc := e.client(via, h2, fresh, conc)
	dc := e.client(routeDirect, h2, fresh, conc)
	defer bc.CloseIdleConnections()
	defer dc.CloseIdleConnections()
	// warm both paths (connections, leaf certificate, DNS, the broker's
	// upstream pool) for as long as one round, so neither side measures
	// its ramp-up
	warm := min(round, time.Second)
	load(bc, e.url("/small"), conc, warm)
	load(dc, e.url("/small"), conc, warm)
	for r := 0; r < rounds; r++ {
		dcpu.add(e.measureCPU(func() { direct.add(load(dc, e.url("/small"), conc, round)) }))
		bcpu.add(e.measureCPU(func() { broker.add(load(bc, e.url("/small"), conc, round)) }))
	}
	if via == routeBroker {
		e.prof.around(name, func() int64 { return load(bc, e.url("/small"), conc, round).n })
	}
	if broker.failures > broker.n/100 || direct.failures > direct.n/100 {
		return broker, direct, bcpu, dcpu, fmt.Errorf("too many failures: broker %d of %d, direct %d of %d",
			broker.failures, broker.n+broker.failures, direct.failures, direct.n+direct.failures)
	}
	if broker.n == 0 {
		return broker, direct, bcpu, dcpu, fmt.Errorf("no request through the broker succeeded")
	}
	return broker, direct, bcpu, dcpu, nil
}

// transfer is what a transfer case moves, and which way.
type transfer int

const (
	download      transfer = iota
	upload                 // a POST with a Content-Length, as a file goes up
	uploadChunked          // a POST of unknown length: chunked, as a generated body goes up
)

// compareStream downloads transferSize bytes streamPairs times each way
// (or uploads them) and returns MiB/s, and the CPU each process spent on
// each route (bcpu, dcpu: in total; perMiB divides by what was moved).
func (e *env) compareStream(via route, kind transfer) (broker, direct float64, bcpu, dcpu cpuUse, err error) {
	const size, n = transferSize, streamPairs
	bc := e.client(via, false, false, 1)
	dc := e.client(routeDirect, false, false, 1)
	defer bc.CloseIdleConnections()
	defer dc.CloseIdleConnections()
	get := func(c *http.Client) (time.Duration, error) {
		t0 := time.Now()
		var resp *http.Response
		var err error
		if kind != download {
			req, rerr := http.NewRequest(http.MethodPost, e.url("/upload"), &pattern{left: size})
			if rerr != nil {
				return 0, rerr
			}
			req.ContentLength = size
			if kind == uploadChunked {
				req.ContentLength = -1
			}
			req.Header.Set("Content-Type", "application/octet-stream")
			resp, err = c.Do(req)
		} else {
			resp, err = c.Get(e.url("/bytes?n=" + strconv.FormatInt(size, 10)))
		}
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if kind != download {
			var ack struct{ Bytes int64 }
			if err := json.NewDecoder(resp.Body).Decode(&ack); err != nil || ack.Bytes != size {
				return 0, fmt.Errorf("the upstream read %d of %d bytes: %v", ack.Bytes, size, err)
			}
			return time.Since(t0), nil
		}
		got, err := io.Copy(io.Discard, resp.Body)
		if err != nil || got != size {
			return 0, fmt.Errorf("read %d of %d bytes: %v", got, size, err)
		}
		return time.Since(t0), nil
	}
	// warm both routes (connections, leaf, the broker's upstream pool) as
	// the small cases do, so neither measures its ramp-up
	for _, c := range []*http.Client{dc, bc} {
		if _, err := get(c); err != nil {
			return 0, 0, bcpu, dcpu, fmt.Errorf("warm-up: %w", err)
		}
	}
	// timed downloads one at a time, with the CPU each process spent on it
	timed := func(c *http.Client, acc *cpuUse) (d time.Duration, err error) {
		acc.add(e.measureCPU(func() { d, err = get(c) }))
		return d, err
	}
	var bt, dt time.Duration
	for i := 0; i < n; i++ {
		d, err := timed(dc, &dcpu)
		if err != nil {
			return 0, 0, bcpu, dcpu, fmt.Errorf("direct: %w", err)
		}
		dt += d
		b, err := timed(bc, &bcpu)
		if err != nil {
			return 0, 0, bcpu, dcpu, fmt.Errorf("broker: %w", err)
		}
		bt += b
	}
	// eight transfers: one lasts ~0.1 s, too few samples for a profile
	label := [...]string{download: "stream", upload: "upload", uploadChunked: "upload_chunked"}[kind]
	e.prof.around(label, func() int64 {
		for i := 0; i < 8; i++ {
			if _, err := get(bc); err != nil {
				return 0
			}
		}
		return 8
	})
	mib := float64(size*int64(n)) / (1 << 20)
	return mib / bt.Seconds(), mib / dt.Seconds(), bcpu, dcpu, nil
}

// idleConns opens n agent connections to the broker (CONNECT, then a TLS
// handshake inside the tunnel), leaves them idle, and returns how much the
// broker's resident memory grew, in MiB.
func (e *env) idleConns(n int) (float64, error) {
	pid := e.srv.Pid()
	before, err := rssMiB(pid)
	if err != nil {
		return 0, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(e.brokerCA)
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte("agent:"+e.token))
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) || firstErr.Load() != nil {
					return
				}
				c, err := openIdle(e.srv.ProxyAddr, apiHost+":"+e.port, auth, roots)
				if err != nil {
					firstErr.Store(err)
					return
				}
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, fmt.Errorf("opening idle connections: %w", err)
	}
	time.Sleep(time.Second)
	after, err := rssMiB(pid)
	if err != nil {
		return 0, err
	}
	return after - before, nil
}

func openIdle(proxy, target, auth string, roots *x509.CertPool) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", proxy, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n", target, target, auth)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil {
		c.Close()
		return nil, err
	}
	if resp.StatusCode != 200 {
		c.Close()
		return nil, fmt.Errorf("CONNECT answered %s", resp.Status)
	}
	host, _, _ := strings.Cut(target, ":")
	tc := tls.Client(c, &tls.Config{ServerName: host, RootCAs: roots, NextProtos: []string{"http/1.1"}})
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Time{})
	return tc, nil
}

func rssMiB(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// pattern is an upload body of left bytes, the alphabet over and over
// (as the upstream's downloads), copied from one block.
type pattern struct {
	left int64
	off  int // where the next byte is in patternBlock (< 26)
}

// patternBlock is the alphabet repeated, 26 bytes longer than the largest
// read it serves, so any read can start at any letter.
var patternBlock = func() []byte {
	b := make([]byte, 64<<10+26)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}()

func (p *pattern) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	n := copy(b[:min(int64(len(b)), p.left)], patternBlock[p.off:])
	p.off = (p.off + n) % 26
	p.left -= int64(n)
	return n, nil
}
