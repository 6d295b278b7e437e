package scrub_test

import (
	"bytes"
	"testing"

	"github.com/agentvault/agent-vault/mitm/scrub"
)

// FuzzReader streams data holding echoes of a secret, cut into three reads
// at arbitrary places and read by a caller with buffers of any size (small
// ones go through the reader's own buffer, large ones are masked in place),
// and checks that no form survives, that the length is kept and that bytes
// outside every occurrence are untouched.
func FuzzReader(f *testing.F) {
	f.Add([]byte("hello SECRET-42 world"), []byte("SECRET-42"), uint16(8), uint16(12), uint16(511))
	f.Add([]byte("aaaaaaaaaaaaa"), []byte("aaaa"), uint16(2), uint16(7), uint16(65535))
	f.Add([]byte(`{"k":"SE\"CR\\ET"} U0VcIkNSXEVU`), []byte(`SE"CR\ET`), uint16(9), uint16(20), uint16(4095))
	f.Add([]byte("x=p%2Fq%20r&y=p%2fq+r"), []byte("p/q r"), uint16(3), uint16(11), uint16(0))
	f.Add([]byte("dG9rZW4tdmFsdWU="), []byte("token-value"), uint16(1), uint16(2), uint16(40000))
	f.Fuzz(func(t *testing.T, data, secret []byte, cut1, cut2, readSize uint16) {
		if len(secret) == 0 || len(data) > 1<<16 || len(secret) > 256 {
			return
		}
		// plant the secret and some encodings of it, so matches are common
		in := bytes.Clone(data)
		forms := scrub.Forms([][]byte{secret})
		if len(forms) == 0 {
			return
		}
		for i, f := range forms {
			if i%2 == 0 && len(in) > 0 {
				at := int(cut1+uint16(i)) % (len(in) + 1)
				in = append(in[:at], append(bytes.Clone(f), in[at:]...)...)
			}
		}
		a := int(cut1) % (len(in) + 1)
		b := int(cut2) % (len(in) + 1)
		if a > b {
			a, b = b, a
		}
		s := scrub.New(forms)
		out := readAllWith(t, s.Reader(&chunks{parts: split(bytes.Clone(in), a, b)}), 1+int(readSize))
		if len(out) != len(in) {
			t.Fatalf("length %d, want %d", len(out), len(in))
		}
		// which input bytes lie inside an occurrence of a form
		covered := make([]bool, len(in))
		for _, f := range forms {
			for i := 0; i+len(f) <= len(in); i++ {
				if bytes.Equal(in[i:i+len(f)], f) {
					for k := i; k < i+len(f); k++ {
						covered[k] = true
					}
				}
			}
		}
		for i := range in {
			if covered[i] {
				if bytes.IndexByte([]byte("[REDACTED]*"), out[i]) < 0 {
					t.Fatalf("byte %d of an occurrence is %q, not a marker byte", i, out[i])
				}
			} else if out[i] != in[i] {
				t.Fatalf("byte %d outside every occurrence changed: %q -> %q", i, in[i], out[i])
			}
		}
		for _, f := range forms {
			if overlapsMarker(f) {
				continue // a marker next to plain bytes may spell it; no secret byte is involved
			}
			if bytes.Contains(out, f) {
				t.Fatalf("form %q survived in %q", f, out)
			}
		}
	})
}

// overlapsMarker reports whether a form could be spelled by marker bytes,
// alone or next to other bytes.
func overlapsMarker(f []byte) bool {
	return bytes.ContainsAny(f, "[]*") || bytes.Contains([]byte("REDACTED"), f)
}
