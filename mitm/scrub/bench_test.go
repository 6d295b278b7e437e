package scrub_test

import (
	"bytes"
	"io"
	"math/rand"
	"net/http"
	"testing"

	"github.com/agentvault/agent-vault/mitm/scrub"
)

const benchStream = 64 << 20

// benchBlocks are 1 MiB blocks the 64 MiB streams repeat: JSON-like text
// (what APIs send) and uniformly random bytes (compressed or binary bodies).
var benchBlocks = func() map[string][]byte {
	rng := rand.New(rand.NewSource(3))
	text := make([]byte, 0, 1<<20)
	words := []string{`{"id":`, `"name":"`, `","created_at":"2026-03-01T12:00:00Z",`, `"content":"The quick brown fox jumps over the lazy dog. `, `Lorem ipsum dolor sit amet, consectetur adipiscing elit",`, `"tokens":[1,2,3,4096],`, `"model":"claude-opus"}`, "\n", "data: ", `"usage":{"input":12345,"output":678}`}
	for len(text) < 1<<20 {
		text = append(text, words[rng.Intn(len(words))]...)
	}
	random := make([]byte, 1<<20)
	rng.Read(random)
	return map[string][]byte{"text": text[:1<<20], "random": random}
}()

// benchForms are the forms of two realistic secrets (a bearer token and a
// basic-auth password with its header form), about what one request injects.
var benchForms = scrub.Forms([][]byte{
	[]byte("sk-ant-api03-SENTINEL0123456789abcdefghijklmnopqrstuvwxyzABCDEF"),
	[]byte("hunter2&co/Pa55:word"),
	[]byte("YWRtaW46aHVudGVyMiZjby9QYTU1OndvcmQ="),
})

// drain reads r the way the broker's httputil.ReverseProxy copies a body:
// reads into a 64 KiB buffer (mitm's copyBuffers).
func drain(b *testing.B, r io.Reader) {
	buf := make([]byte, 64<<10)
	total := 0
	for {
		n, err := r.Read(buf)
		total += n
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	if total != benchStream {
		b.Fatalf("read %d bytes", total)
	}
}

// BenchmarkReader streams 64 MiB without any echo through the scrubber;
// the copy cases read the same source unscrubbed, for the ratio.
func BenchmarkReader(b *testing.B) {
	s := scrub.New(benchForms)
	for _, data := range []string{"text", "random"} {
		block := benchBlocks[data]
		b.Run("copy/"+data, func(b *testing.B) {
			b.SetBytes(benchStream)
			b.ReportAllocs()
			for b.Loop() {
				drain(b, &repeatReader{block: block, left: benchStream})
			}
		})
		b.Run("scrub/"+data, func(b *testing.B) {
			b.SetBytes(benchStream)
			b.ReportAllocs()
			for b.Loop() {
				drain(b, s.Reader(&repeatReader{block: block, left: benchStream}))
			}
		})
	}
	// an echo every 64 KiB
	block := bytes.Clone(benchBlocks["text"])
	for off := 0; off+100 < len(block); off += 64 << 10 {
		copy(block[off:], benchForms[len(benchForms)-1])
	}
	b.Run("scrub/text-with-echoes", func(b *testing.B) {
		b.SetBytes(benchStream)
		b.ReportAllocs()
		for b.Loop() {
			drain(b, s.Reader(&repeatReader{block: block, left: benchStream}))
		}
	})
}

// BenchmarkNaiveIndex is the alternative design measured against: one
// bytes.Index pass per form over each 32 KiB chunk (search only, no copy).
func BenchmarkNaiveIndex(b *testing.B) {
	block := benchBlocks["text"]
	b.SetBytes(int64(len(block)))
	b.ReportAllocs()
	for b.Loop() {
		for off := 0; off < len(block); off += 32 << 10 {
			chunk := block[off : off+32<<10]
			for _, f := range benchForms {
				if bytes.Index(chunk, f) >= 0 {
					b.Fatal("match")
				}
			}
		}
	}
}

// BenchmarkForms and BenchmarkNew are the per-request costs: the forms of a
// bearer token (plain) and of a password needing every escaping (nasty), and
// compiling them.
func BenchmarkForms(b *testing.B) {
	for name, secret := range map[string][]byte{"plain": plainSecret, "nasty": nastySecret} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				scrub.Forms([][]byte{secret})
			}
		})
	}
}

func BenchmarkNew(b *testing.B) {
	for name, secret := range map[string][]byte{"plain": plainSecret, "nasty": nastySecret} {
		forms := scrub.Forms([][]byte{secret})
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				scrub.New(forms)
			}
		})
	}
}

// BenchmarkHeader scrubs a typical response header with no echo.
func BenchmarkHeader(b *testing.B) {
	s := scrub.New(benchForms)
	h := http.Header{
		"Content-Type":   {"application/json"},
		"Date":           {"Sun, 01 Mar 2026 12:00:00 GMT"},
		"Request-Id":     {"req_011CXyz0123456789abcdef"},
		"Cache-Control":  {"no-store"},
		"Content-Length": {"12345"},
		"Server":         {"cloudflare"},
		"Set-Cookie":     {"__cf_bm=abcdefghijklmnopqrstuvwxyz0123456789; path=/; HttpOnly; Secure"},
	}
	b.ReportAllocs()
	for b.Loop() {
		s.Header(h)
	}
}
