package inject

import (
	"encoding/json"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

const fuzzPH = "__PH__"

// FuzzReplaceEncoded: whatever the agent's percent-encoding, the upstream
// decodes the placeholder's occurrences as the secret and everything else as
// it was.
func FuzzReplaceEncoded(f *testing.F) {
	f.Add("a=__PH__&b=%5F_PH__+x", "s3cr\"t &=/%+é")
	f.Add("/v1/__PH__/%2F", "a/b")
	f.Add("%5F%5FPH%5F%5F__PH__", "x y")
	f.Fuzz(func(t *testing.T, raw, secret string) {
		for _, plus := range []bool{false, true} {
			unescape, escape := url.PathUnescape, url.PathEscape
			if plus {
				unescape, escape = url.QueryUnescape, url.QueryEscape
			}
			before, err := unescape(raw)
			if err != nil {
				continue
			}
			out, n := replaceEncoded([]byte(raw), fuzzPH, []byte(escape(secret)), plus)
			after, err := unescape(string(out))
			if err != nil {
				t.Fatalf("plus=%v: output %q does not decode: %v", plus, out, err)
			}
			if want := strings.ReplaceAll(before, fuzzPH, secret); after != want {
				t.Fatalf("plus=%v: %q decodes to %q, want %q", plus, out, after, want)
			}
			if n != strings.Count(before, fuzzPH) {
				t.Fatalf("plus=%v: %d swaps, %d occurrences", plus, n, strings.Count(before, fuzzPH))
			}
		}
	})
}

// FuzzReplaceJSON: a valid document stays valid and decodes to the same
// value with the placeholder swapped in every string value (keys untouched).
func FuzzReplaceJSON(f *testing.F) {
	f.Add(`{"a":"__PH__","__PH__":["x__PH__",1,{"b":"\u005f_PH__"}]}`, `s"e\c/ré☃`)
	f.Add(`["\ud83d\ude00__PH__"]`, "\n")
	f.Add(`"__PH__"`, "x")
	f.Fuzz(func(t *testing.T, doc, secret string) {
		var before any
		if json.Unmarshal([]byte(doc), &before) != nil || !utf8.ValidString(secret) {
			return // a JSON string cannot carry invalid UTF-8 exactly
		}
		out, _ := replaceJSON([]byte(doc), fuzzPH, jsonEscape([]byte(secret)), nil)
		var after any
		if err := json.Unmarshal(out, &after); err != nil {
			t.Fatalf("output %q is not JSON: %v", out, err)
		}
		want := swapStrings(before, secret)
		if !reflect.DeepEqual(after, want) {
			t.Fatalf("%q became %q", doc, out)
		}
	})
}

func swapStrings(v any, secret string) any {
	switch x := v.(type) {
	case string:
		return strings.ReplaceAll(x, fuzzPH, secret)
	case []any:
		for i := range x {
			x[i] = swapStrings(x[i], secret)
		}
	case map[string]any:
		for k := range x {
			x[k] = swapStrings(x[k], secret)
		}
	}
	return v
}
