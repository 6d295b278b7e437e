package mitm

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
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
