package inject

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/agentvault/agent-vault/policy"
)

// swapPlaceholder replaces the placeholder in the declared places. Checks
// that can fail run before anything is changed, except reading the body.
func swapPlaceholder(req *http.Request, a *policy.Auth, secret []byte) ([][]byte, error) {
	ph := a.Placeholder
	if ph == "" {
		return nil, fmt.Errorf("no placeholder configured")
	}
	var hdrKey string
	var hdrVals []string
	if hasPlace(a, policy.InHeader) && a.Header != "" {
		hdrKey = textproto.CanonicalMIMEHeaderKey(a.Header)
		hdrVals = req.Header[hdrKey]
		if slices.ContainsFunc(hdrVals, func(v string) bool { return strings.Contains(v, ph) }) {
			if err := headerSafe(secret); err != nil {
				return nil, fmt.Errorf("header %s: %w", hdrKey, err)
			}
		}
	}
	var newBody []byte
	bodyKind := ""
	if hasPlace(a, policy.InBody) {
		var err error
		bodyKind, newBody, err = readBody(req)
		if err != nil {
			return nil, err
		}
	}

	StripAgentAuth(req.Header, &policy.Service{Auth: *a})
	var out forms
	raw := secret
	if hasPlace(a, policy.InPath) && req.URL != nil {
		escaped := url.PathEscape(string(secret))
		newRaw, n := replaceEncoded([]byte(req.URL.EscapedPath()), ph, []byte(escaped), false)
		if n > 0 {
			if p, err := url.PathUnescape(string(newRaw)); err == nil {
				req.URL.Path, req.URL.RawPath = p, string(newRaw)
				out.add(raw)
				out.add([]byte(escaped))
			}
		}
	}
	if hasPlace(a, policy.InQuery) && req.URL != nil && req.URL.RawQuery != "" {
		escaped := []byte(url.QueryEscape(string(secret)))
		if q, n := replaceInPairs([]byte(req.URL.RawQuery), ph, escaped, nil); n > 0 {
			req.URL.RawQuery = string(q)
			out.add(raw)
			out.add(escaped)
		}
	}
	if hdrKey != "" {
		for i, v := range hdrVals {
			if strings.Contains(v, ph) {
				hdrVals[i] = strings.ReplaceAll(v, ph, string(secret))
				out.add(raw)
			}
		}
	}
	if bodyKind != "" {
		var n int
		var escaped []byte
		switch bodyKind {
		case "json":
			escaped = jsonEscape(secret)
			newBody, n = replaceJSON(newBody, ph, escaped, a.BodyFields)
		case "form":
			escaped = []byte(url.QueryEscape(string(secret)))
			newBody, n = replaceInPairs(newBody, ph, escaped, a.BodyFields)
		}
		if n > 0 {
			out.add(raw)
			out.add(escaped)
		}
		setBody(req, newBody)
	}
	for i := range out {
		out[i] = bytes.Clone(out[i])
	}
	return out, nil
}

// readBody reads a JSON or form body (kind "json" or "form"), or returns ""
// for a body that is not rewritten. The body is consumed only when a kind
// is returned.
func readBody(req *http.Request) (kind string, body []byte, err error) {
	if req.Body == nil || req.Body == http.NoBody {
		return "", nil, nil
	}
	if ce := req.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return "", nil, nil // compressed: not touched
	}
	mt, _, err := mime.ParseMediaType(req.Header.Get("Content-Type"))
	if err != nil {
		return "", nil, nil
	}
	switch {
	case mt == "application/json" || strings.HasSuffix(mt, "+json"):
		kind = "json"
	case mt == "application/x-www-form-urlencoded":
		kind = "form"
	default:
		return "", nil, nil
	}
	if req.ContentLength > MaxBodyBytes {
		return "", nil, fmt.Errorf("%w: %d bytes (at most %d)", ErrBodyTooLarge, req.ContentLength, MaxBodyBytes)
	}
	body, err = io.ReadAll(io.LimitReader(req.Body, MaxBodyBytes+1))
	req.Body.Close()
	if err != nil {
		return "", nil, fmt.Errorf("read request body: %w", err)
	}
	if len(body) > MaxBodyBytes {
		return "", nil, fmt.Errorf("%w: more than %d bytes", ErrBodyTooLarge, MaxBodyBytes)
	}
	return kind, body, nil
}

// setBody installs body and makes every length field agree with it.
func setBody(req *http.Request, body []byte) {
	req.ContentLength = int64(len(body))
	req.TransferEncoding = nil
	if _, ok := req.Header["Content-Length"]; ok {
		req.Header.Set("Content-Length", strconv.Itoa(len(body)))
	}
	if len(body) == 0 {
		req.Body, req.GetBody = http.NoBody, func() (io.ReadCloser, error) { return http.NoBody, nil }
		return
	}
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
}

// replaceInPairs swaps ph in the values of an application/x-www-form-
// urlencoded string (a query or a form body), keeping every other byte as it
// was. With fields set, only values of those (decoded) keys are touched.
func replaceInPairs(s []byte, ph string, escaped []byte, fields []string) ([]byte, int) {
	if !bytes.Contains(s, []byte(ph)) && bytes.IndexAny(s, "%+") < 0 {
		return s, 0
	}
	var out []byte
	total := 0
	for i := 0; i <= len(s); {
		end := bytes.IndexByte(s[i:], '&')
		if end < 0 {
			end = len(s)
		} else {
			end += i
		}
		pair := s[i:end]
		eq := bytes.IndexByte(pair, '=')
		var rep []byte
		n := 0
		if eq >= 0 && (len(fields) == 0 || fieldNamed(pair[:eq], fields)) {
			rep, n = replaceEncoded(pair[eq+1:], ph, escaped, true)
		}
		if n > 0 {
			if out == nil {
				out = append(make([]byte, 0, len(s)+n*len(escaped)), s[:i]...)
			}
			out = append(out, pair[:eq+1]...)
			out = append(out, rep...)
			total += n
		} else if out != nil {
			out = append(out, pair...)
		}
		if end < len(s) && out != nil {
			out = append(out, '&')
		}
		i = end + 1
	}
	if total == 0 {
		return s, 0
	}
	return out, total
}

func fieldNamed(rawKey []byte, fields []string) bool {
	k, err := url.QueryUnescape(string(rawKey))
	return err == nil && slices.Contains(fields, k)
}
