package mitm

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkBrokeredRequest measures a small request with a credential
// injected and the response scrubbed, over a warm connection, against the
// same request sent directly to the upstream. It prints a ratio line in
// the format of `make bench`.
func BenchmarkBrokeredRequest(b *testing.B) {
	for _, h2 := range []bool{false, true} {
		b.Run(fmt.Sprintf("h2=%v", h2), func(b *testing.B) {
			e := newEnv(b)
			broker := e.transparentClient(h2)
			direct := &http.Client{Transport: &http.Transport{
				TLSClientConfig:   &tls.Config{RootCAs: e.b.cfg.UpstreamRoots, ServerName: "api.example.test"},
				ForceAttemptHTTP2: h2,
			}}
			if !h2 {
				direct.Transport.(*http.Transport).TLSClientConfig.NextProtos = []string{"http/1.1"}
			}
			defer direct.CloseIdleConnections()
			run := func(c *http.Client, url string, n int) time.Duration {
				start := time.Now()
				for i := 0; i < n; i++ {
					req, _ := http.NewRequest("GET", url, nil)
					req.Header.Set("Authorization", "Bearer "+placeholder)
					resp, err := c.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				return time.Since(start)
			}
			brokerURL := e.url("api.example.test", "/small")
			directURL := fmt.Sprintf("https://127.0.0.1:%d/small", e.up.port)
			run(broker, brokerURL, 10)
			run(direct, directURL, 10)
			b.ResetTimer()
			db := run(broker, brokerURL, b.N)
			b.StopTimer()
			dd := run(direct, directURL, b.N)
			per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(b.N) }
			b.Logf("BENCH case=small-request-h2-%v broker=%.0f direct=%.0f unit=us ratio=%.2f", h2, per(db), per(dd), per(db)/per(dd))
		})
	}
}

// BenchmarkBrokeredParallel is the concurrent form: 16 clients (h1: one
// connection each; h2: shared connections) sending small requests with a
// credential injected. It reports requests/s through the broker and
// directly; go test -cpuprofile on it shows where the broker's CPU goes.
func BenchmarkBrokeredParallel(b *testing.B) {
	for _, h2 := range []bool{false, true} {
		b.Run(fmt.Sprintf("h2=%v", h2), func(b *testing.B) {
			e := newEnv(b, func(c *Config) {
				// the server's configuration: JSON at info level
				c.Logger = slog.New(slog.NewJSONHandler(io.Discard, nil))
			})
			e.up.quiet, e.sink.quiet = true, true
			broker := e.transparentClient(h2)
			broker.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
			direct := &http.Client{Transport: &http.Transport{
				TLSClientConfig:     &tls.Config{RootCAs: e.b.cfg.UpstreamRoots, ServerName: "api.example.test"},
				ForceAttemptHTTP2:   h2,
				MaxIdleConnsPerHost: 64,
			}}
			if !h2 {
				direct.Transport.(*http.Transport).TLSClientConfig.NextProtos = []string{"http/1.1"}
			}
			defer direct.CloseIdleConnections()
			brokerURL := e.url("api.example.test", "/small")
			directURL := fmt.Sprintf("https://127.0.0.1:%d/small", e.up.port)
			procs := runtime.GOMAXPROCS(0)
			b.SetParallelism((16 + procs - 1) / procs)
			var failed atomic.Bool
			do := func(c *http.Client, url string) {
				req, _ := http.NewRequest("GET", url, nil)
				req.Header.Set("Authorization", "Bearer "+placeholder)
				resp, err := c.Do(req)
				if err != nil {
					failed.Store(true)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			par := func(c *http.Client, url string) time.Duration {
				start := time.Now()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						do(c, url)
					}
				})
				return time.Since(start)
			}
			for i := 0; i < 32; i++ {
				do(broker, brokerURL)
				do(direct, directURL)
			}
			b.ResetTimer()
			db := par(broker, brokerURL)
			b.StopTimer()
			dd := par(direct, directURL)
			if failed.Load() {
				b.Fatal("a request failed")
			}
			rps := func(d time.Duration) float64 { return float64(b.N) / d.Seconds() }
			b.ReportMetric(rps(db), "broker-req/s")
			b.ReportMetric(rps(dd), "direct-req/s")
			b.Logf("BENCH case=parallel16-h2-%v broker=%.0f direct=%.0f unit=req/s ratio=%.3f", h2, rps(db), rps(dd), rps(db)/rps(dd))
		})
	}
}

// BenchmarkIdleConnMemory opens b.N agent connections through the explicit
// proxy (CONNECT, then a TLS handshake inside the tunnel), leaves them idle
// and reports the broker's heap and stack growth per connection (the test
// process holds the clients too: their share is measured separately by
// opening the same number of direct TLS connections to the upstream).
func BenchmarkIdleConnMemory(b *testing.B) {
	e := newEnv(b, func(c *Config) { c.Logger = slog.New(slog.NewJSONHandler(io.Discard, nil)) })
	e.sink.quiet = true
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte("agent:"+agentToken))
	mem := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse + m.StackInuse
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	open := func(viaBroker bool) {
		var c net.Conn
		var err error
		if viaBroker {
			c, err = net.Dial("tcp", e.proxyAddr)
			if err == nil {
				fmt.Fprintf(c, "CONNECT api.example.test:%d HTTP/1.1\r\nHost: api.example.test\r\nProxy-Authorization: %s\r\n\r\n", e.up.port, auth)
				var resp *http.Response
				if resp, err = http.ReadResponse(bufio.NewReader(c), nil); err == nil && resp.StatusCode != 200 {
					err = fmt.Errorf("CONNECT: %s", resp.Status)
				}
			}
		} else {
			c, err = net.Dial("tcp", e.up.srv.Listener.Addr().String())
		}
		if err != nil {
			b.Fatal(err)
		}
		roots := e.caPool
		if !viaBroker {
			roots = e.b.cfg.UpstreamRoots
		}
		tc := tls.Client(c, &tls.Config{ServerName: "api.example.test", RootCAs: roots, NextProtos: []string{"http/1.1"}})
		if err := tc.Handshake(); err != nil {
			b.Fatal(err)
		}
		conns = append(conns, tc)
	}
	b.ResetTimer()
	m0 := mem()
	for i := 0; i < b.N; i++ {
		open(false)
	}
	time.Sleep(100 * time.Millisecond)
	m1 := mem()
	for i := 0; i < b.N; i++ {
		open(true)
	}
	time.Sleep(100 * time.Millisecond)
	m2 := mem()
	b.StopTimer()
	direct := float64(m1-m0) / float64(b.N)
	brokered := float64(m2-m1) / float64(b.N)
	b.ReportMetric(direct, "direct-bytes/conn")
	b.ReportMetric(brokered, "brokered-bytes/conn")
	b.ReportMetric(brokered-direct, "broker-bytes/conn")
}
