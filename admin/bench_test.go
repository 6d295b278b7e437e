package admin

import "testing"

// BenchmarkVerifyPasswordDefault measures one login's Argon2id cost with
// DefaultPasswordParams (64 MiB, t=1, p=2).
func BenchmarkVerifyPasswordDefault(b *testing.B) {
	h, err := hashPassword("a password of twenty chars", DefaultPasswordParams)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if ok, err := verifyPassword("a password of twenty chars", h); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}
