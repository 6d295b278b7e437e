package ca_test

import (
	"strconv"
	"testing"

	"github.com/agentvault/agent-vault/mitm/ca"
)

// BenchmarkLeafMint signs a new leaf per iteration (a cache miss).
func BenchmarkLeafMint(b *testing.B) {
	a := newAuthority(b, ca.Options{CacheSize: 1024})
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := a.Leaf("n" + strconv.Itoa(i) + ".example.com"); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkLeafHit returns a cached leaf.
func BenchmarkLeafHit(b *testing.B) {
	a := newAuthority(b, ca.Options{})
	if _, err := a.Leaf("api.example.com"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Leaf("api.example.com"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLeafHitParallel returns cached leaves from every core.
func BenchmarkLeafHitParallel(b *testing.B) {
	a := newAuthority(b, ca.Options{})
	names := make([]string, 64)
	for i := range names {
		names[i] = "h" + strconv.Itoa(i) + ".example.com"
		if _, err := a.Leaf(names[i]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := a.Leaf(names[i%len(names)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}
