package scrub

import (
	"bytes"
	"encoding/base64"
	"slices"
	"strings"
	"unicode/utf8"
)

// MinFormLen is the shortest form Forms returns: shorter strings occur by
// chance too often to be redacted.
const MinFormLen = 4

// Forms returns every encoded form of each secret that an upstream could
// echo: the raw bytes; JSON string escapings (minimal, HTML-safe, with "\/",
// ASCII-only with \u escapes in lower and upper case hex, and their
// combinations); percent-encodings (query escaping with '+' or %20 for space,
// path escaping, encodeURIComponent's set, every non-unreserved byte; upper
// and lower case hex); and the base64 characters fully determined by the
// secret when it starts at each of the three byte offsets of a base64 group,
// in the standard and URL alphabets, so it is found inside any longer
// encoded blob, padded or not. Forms shorter than MinFormLen are skipped.
// The result is deduplicated and minimal: a form containing another form is
// dropped, since redacting the shorter one removes it.
func Forms(secrets [][]byte) [][]byte {
	var all [][]byte
	add := func(b []byte) {
		if len(b) >= MinFormLen {
			all = append(all, b)
		}
	}
	for _, s := range secrets {
		if len(s) == 0 {
			continue
		}
		add(bytes.Clone(s))
		if bytes.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r >= 0x80 || strings.ContainsRune(`"\\/<>&`, r) }) {
			for fl := range jsonFlags(1 << 4) {
				add(jsonEscape(s, fl))
			}
		}
		if bytes.ContainsFunc(s, func(r rune) bool { return r >= 0x80 || !unreserved[r] }) {
			for _, keep := range []*[256]bool{&unreserved, &pathSafe, &componentSafe} {
				for _, plus := range []bool{false, true} {
					for _, lower := range []bool{false, true} {
						add(percentEscape(s, keep, plus, lower))
					}
				}
			}
		}
		for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
			for k := range 3 {
				add(base64Core(enc, s, k))
			}
		}
	}
	return minimal(all)
}

// minimal sorts forms (shortest first, then bytewise), drops duplicates and
// every form that contains another one.
func minimal(forms [][]byte) [][]byte {
	slices.SortFunc(forms, func(a, b []byte) int {
		if len(a) != len(b) {
			return len(a) - len(b)
		}
		return bytes.Compare(a, b)
	})
	out := forms[:0]
	for _, f := range forms {
		covered := false
		for _, k := range out {
			if bytes.Contains(f, k) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, f)
		}
	}
	return slices.Clip(out)
}

// base64Core returns the base64 characters that depend only on s when s
// starts k bytes into a 3-byte group: the characters at both ends that share
// bits with neighbouring bytes are left out.
func base64Core(enc *base64.Encoding, s []byte, k int) []byte {
	buf := make([]byte, k+len(s)+2)
	copy(buf[k:], s)
	text := enc.EncodeToString(buf)
	from := (8*k + 5) / 6      // first character whose 6 bits start at or after s
	to := (8*k + 8*len(s)) / 6 // characters ending at or before the end of s
	if to <= from || to > len(text) {
		return nil
	}
	return []byte(text[from:to])
}

// JSON escaping variants, combined as bit flags.
type jsonFlags uint8

const (
	jsonHTML     jsonFlags = 1 << iota // <, >, & and U+2028/U+2029 as \u escapes (Go's encoding/json)
	jsonSlash                          // "/" as "\/" (PHP)
	jsonASCII                          // every non-ASCII rune as \u escapes (Python's default, PHP)
	jsonUpperHex                       // \u00E9 rather than \u00e9
)

// jsonEscape returns s escaped for the inside of a JSON string.
func jsonEscape(s []byte, fl jsonFlags) []byte {
	hexd := "0123456789abcdef"
	if fl&jsonUpperHex != 0 {
		hexd = "0123456789ABCDEF"
	}
	u := func(out []byte, r rune) []byte {
		return append(out, '\\', 'u', hexd[r>>12&0xf], hexd[r>>8&0xf], hexd[r>>4&0xf], hexd[r&0xf])
	}
	out := make([]byte, 0, len(s)+8)
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			i++
			switch {
			case c == '"' || c == '\\':
				out = append(out, '\\', c)
			case c == '\n':
				out = append(out, '\\', 'n')
			case c == '\r':
				out = append(out, '\\', 'r')
			case c == '\t':
				out = append(out, '\\', 't')
			case c == '\b':
				out = append(out, '\\', 'b')
			case c == '\f':
				out = append(out, '\\', 'f')
			case c < 0x20:
				out = u(out, rune(c))
			case c == '/' && fl&jsonSlash != 0:
				out = append(out, '\\', '/')
			case (c == '<' || c == '>' || c == '&') && fl&jsonHTML != 0:
				out = u(out, rune(c))
			default:
				out = append(out, c)
			}
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		switch {
		case fl&jsonASCII != 0:
			if r >= 0x10000 {
				r1, r2 := utf16Pair(r)
				out = u(u(out, r1), r2)
			} else {
				out = u(out, r) // an invalid byte becomes \ufffd, as encoders write it
			}
		case (r == '\u2028' || r == '\u2029') && fl&jsonHTML != 0:
			out = u(out, r)
		default:
			out = append(out, s[i:i+size]...)
		}
		i += size
	}
	return out
}

func utf16Pair(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + (r>>10)&0x3ff, 0xdc00 + r&0x3ff
}

// Byte sets left unescaped by the percent-encoding variants.
var (
	unreserved    = byteSet("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
	pathSafe      = byteSet("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~$&+:=@") // url.PathEscape
	componentSafe = byteSet("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()")  // encodeURIComponent
)

func byteSet(s string) (set [256]bool) {
	for i := 0; i < len(s); i++ {
		set[s[i]] = true
	}
	return set
}

// percentEscape escapes every byte outside keep as %XX; a space as '+' when
// plus is set.
func percentEscape(s []byte, keep *[256]bool, plus, lower bool) []byte {
	hexd := "0123456789ABCDEF"
	if lower {
		hexd = "0123456789abcdef"
	}
	out := make([]byte, 0, len(s)+8)
	for _, c := range s {
		switch {
		case keep[c]:
			out = append(out, c)
		case c == ' ' && plus:
			out = append(out, '+')
		default:
			out = append(out, '%', hexd[c>>4], hexd[c&0xf])
		}
	}
	return out
}
