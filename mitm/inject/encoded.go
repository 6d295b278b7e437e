package inject

import (
	"bytes"
	"unicode/utf16"
	"unicode/utf8"
)

// An encoded text (percent-encoded or a JSON string's inside) is searched in
// its decoded form, and every decoded byte remembers where its encoding
// started in the raw text, so an occurrence is replaced exactly over its raw
// bytes and everything around it keeps the agent's own encoding.

// decoded is raw decoded, with starts[k] the raw offset where decoded byte k
// came from (starts has one extra entry: len(raw)). Several decoded bytes
// share a start when one escape yields several bytes (\u00e9 → 2 bytes).
type decoded struct {
	text   []byte
	starts []int
}

// replaceEncoded swaps every occurrence of ph in the percent-decoded form of
// raw ('+' decodes to a space when plus is set) for escaped, and returns the
// new raw text and the number of swaps.
func replaceEncoded(raw []byte, ph string, escaped []byte, plus bool) ([]byte, int) {
	special := "%"
	if plus {
		special = "%+"
	}
	if bytes.IndexAny(raw, special) < 0 {
		return replacePlain(raw, ph, escaped)
	}
	d := decoded{text: make([]byte, 0, len(raw)), starts: make([]int, 0, len(raw)+1)}
	for i := 0; i < len(raw); {
		c := raw[i]
		switch {
		case c == '%' && i+2 < len(raw) && ishex(raw[i+1]) && ishex(raw[i+2]):
			d.text = append(d.text, unhex(raw[i+1])<<4|unhex(raw[i+2]))
			d.starts = append(d.starts, i)
			i += 3
		case c == '+' && plus:
			d.text = append(d.text, ' ')
			d.starts = append(d.starts, i)
			i++
		default:
			d.text = append(d.text, c)
			d.starts = append(d.starts, i)
			i++
		}
	}
	d.starts = append(d.starts, len(raw))
	return d.replace(raw, ph, escaped)
}

// replacePlain is replaceEncoded for a raw text without escapes.
func replacePlain(raw []byte, ph string, escaped []byte) ([]byte, int) {
	n := bytes.Count(raw, []byte(ph))
	if n == 0 {
		return raw, 0
	}
	return bytes.ReplaceAll(raw, []byte(ph), escaped), n
}

// replace swaps the occurrences of ph in d.text that cover whole escapes,
// rewriting raw.
func (d *decoded) replace(raw []byte, ph string, escaped []byte) ([]byte, int) {
	var out []byte
	last, n := 0, 0 // raw bytes up to last are copied
	for i := 0; i+len(ph) <= len(d.text); {
		j := bytes.Index(d.text[i:], []byte(ph))
		if j < 0 {
			break
		}
		s, e := i+j, i+j+len(ph)
		// an occurrence must start and end on escape boundaries
		if s > 0 && d.starts[s] == d.starts[s-1] || e < len(d.text) && d.starts[e] == d.starts[e-1] {
			i = s + 1
			continue
		}
		out = append(out, raw[last:d.starts[s]]...)
		out = append(out, escaped...)
		last = d.starts[e]
		n++
		i = e
	}
	if n == 0 {
		return raw, 0
	}
	return append(out, raw[last:]...), n
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// decodeJSONString decodes the inside of a JSON string (without quotes).
// It reports false for an invalid escape.
func decodeJSONString(raw []byte) (decoded, bool) {
	d := decoded{text: make([]byte, 0, len(raw)), starts: make([]int, 0, len(raw)+1)}
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			d.text = append(d.text, c)
			d.starts = append(d.starts, i)
			i++
			continue
		}
		if i+1 >= len(raw) {
			return d, false
		}
		start := i
		var r rune
		switch raw[i+1] {
		case '"', '\\', '/':
			r = rune(raw[i+1])
			i += 2
		case 'b':
			r, i = '\b', i+2
		case 'f':
			r, i = '\f', i+2
		case 'n':
			r, i = '\n', i+2
		case 'r':
			r, i = '\r', i+2
		case 't':
			r, i = '\t', i+2
		case 'u':
			var ok bool
			if r, ok = hex4(raw, i+2); !ok {
				return d, false
			}
			i += 6
			if utf16.IsSurrogate(r) {
				if r2, ok := hex4(raw, i+2); ok && i+1 < len(raw) && raw[i] == '\\' && raw[i+1] == 'u' {
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						r = dec
						i += 6
					}
				}
			}
		default:
			return d, false
		}
		n := len(d.text)
		d.text = utf8.AppendRune(d.text, r)
		for range len(d.text) - n {
			d.starts = append(d.starts, start)
		}
	}
	d.starts = append(d.starts, len(raw))
	return d, true
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		if !ishex(c) {
			return 0, false
		}
		r = r<<4 | rune(unhex(c))
	}
	return r, true
}

// jsonEscape escapes s for the inside of a JSON string: quote, backslash
// and control bytes; everything else, including non-ASCII and invalid UTF-8,
// passes through unchanged so the upstream decodes exactly s.
func jsonEscape(s []byte) []byte {
	const hexd = "0123456789abcdef"
	out := make([]byte, 0, len(s)+8)
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			out = append(out, '\\', c)
		case c == '\n':
			out = append(out, '\\', 'n')
		case c == '\r':
			out = append(out, '\\', 'r')
		case c == '\t':
			out = append(out, '\\', 't')
		case c < 0x20:
			out = append(out, '\\', 'u', '0', '0', hexd[c>>4], hexd[c&0xf])
		default:
			out = append(out, c)
		}
	}
	return out
}
