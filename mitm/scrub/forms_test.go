package scrub_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/agentvault/agent-vault/mitm/scrub"
)

// secrets used throughout: a plain token and one with every character that
// some encoding changes.
var (
	plainSecret  = []byte("sk_live_SENTINEL_0123456789abcdef")
	nastySecret  = []byte(`SENT"IN\EL&=/%+ é☃𝄞<>'` + "\t")
	shortSecret  = []byte("abc")
	testSecrets  = [][]byte{plainSecret, nastySecret}
	containsForm = func(b []byte, forms [][]byte) []byte {
		for _, f := range forms {
			if bytes.Contains(b, f) {
				return f
			}
		}
		return nil
	}
)

func TestFormsCoverEncodings(t *testing.T) {
	for _, secret := range testSecrets {
		forms := scrub.Forms([][]byte{secret})
		s := string(secret)
		goJSON, _ := json.Marshal(s) // HTML-safe escaping, as Go writes it
		var plainJSON bytes.Buffer
		enc := json.NewEncoder(&plainJSON)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(s)
		echoes := map[string]string{
			"raw":               s,
			"go json":           string(goJSON),
			"json no html":      plainJSON.String(),
			"query escape":      url.QueryEscape(s),
			"path escape":       url.PathEscape(s),
			"query %20":         strings.ReplaceAll(url.QueryEscape(s), "+", "%20"),
			"query lower hex":   lowerHex(url.QueryEscape(s)),
			"php json":          phpJSON(s),
			"python json":       pythonJSON(s),
			"url in a url":      "https://x.example/cb?token=" + url.QueryEscape(s) + "&b=1",
			"json in a log":     `{"msg":"auth with ` + string(goJSON[1:len(goJSON)-1]) + ` failed"}`,
			"basic-like inside": base64.StdEncoding.EncodeToString([]byte("user:" + s)),
		}
		for k := range 3 {
			for _, e := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
				for _, tail := range []string{"", "x", "yz", "tail!"} {
					blob := strings.Repeat("P", k) + s + tail
					echoes["base64 "+blob[:k]+"|"+tail] = "data:" + e.EncodeToString([]byte(blob)) + ";"
				}
			}
		}
		for name, echo := range echoes {
			if containsForm([]byte(echo), forms) == nil {
				t.Errorf("secret %q: echo %s (%q) contains no form", secret, name, echo)
			}
		}
	}
}

func TestFormsShape(t *testing.T) {
	forms := scrub.Forms([][]byte{plainSecret, nastySecret, shortSecret, nil, plainSecret})
	if len(forms) == 0 {
		t.Fatal("no forms")
	}
	for i, f := range forms {
		if len(f) < scrub.MinFormLen {
			t.Errorf("form %q shorter than %d", f, scrub.MinFormLen)
		}
		for j, g := range forms {
			if i != j && bytes.Contains(f, g) {
				t.Errorf("form %q contains form %q (not minimal)", f, g)
			}
		}
	}
	if slices.ContainsFunc(forms, func(f []byte) bool { return bytes.Equal(f, shortSecret) }) {
		t.Error("a 3-byte secret became a form")
	}
	again := scrub.Forms([][]byte{plainSecret, nastySecret, shortSecret, nil, plainSecret})
	if !slices.EqualFunc(forms, again, bytes.Equal) {
		t.Error("Forms is not deterministic")
	}
	// a plain token has few forms: itself and its base64 cores
	if n := len(scrub.Forms([][]byte{plainSecret})); n < 1+3 || n > 1+6 {
		t.Errorf("plain secret has %d forms, want raw + base64 cores", n)
	}
	if len(scrub.Forms(nil)) != 0 {
		t.Error("forms of nothing")
	}
}

func lowerHex(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1] = bytes.ToLower(b[i+1 : i+2])[0]
			b[i+2] = bytes.ToLower(b[i+2 : i+3])[0]
		}
	}
	return string(b)
}

// phpJSON mimics json_encode's defaults: "\/" and \u escapes for non-ASCII.
func phpJSON(s string) string {
	return strings.ReplaceAll(pythonJSON(s), "/", `\/`)
}

// pythonJSON mimics json.dumps's default ensure_ascii.
func pythonJSON(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x80:
			b.WriteRune(r)
		case r >= 0x10000:
			r -= 0x10000
			b.WriteString(jsonU(0xd800 + (r>>10)&0x3ff))
			b.WriteString(jsonU(0xdc00 + r&0x3ff))
		default:
			b.WriteString(jsonU(r))
		}
	}
	return b.String()
}

func jsonU(r rune) string {
	const h = "0123456789abcdef"
	return string([]byte{'\\', 'u', h[r>>12&0xf], h[r>>8&0xf], h[r>>4&0xf], h[r&0xf]})
}

func TestMarker(t *testing.T) {
	for n, want := range map[int]string{4: "****", 9: "*********", 10: "[REDACTED]", 13: "[REDACTED***]"} {
		if got := string(scrub.Marker(n)); got != want {
			t.Errorf("Marker(%d) = %q, want %q", n, got, want)
		}
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
