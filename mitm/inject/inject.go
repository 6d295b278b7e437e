package inject

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/agentvault/agent-vault/policy"
)

// MaxBodyBytes is the largest request body Apply reads to swap a
// placeholder in it.
const MaxBodyBytes = 8 << 20

// Errors Apply returns (wrapped). None of them carries the secret.
var (
	ErrBodyTooLarge = errors.New("request body too large to swap the placeholder in")
	ErrHeaderUnsafe = errors.New("credential contains a control character (CR, LF, NUL, ...) and cannot be sent in a header")
	ErrEmptySecret  = errors.New("credential is empty")
	ErrNoService    = errors.New("no service")
)

// Apply strips agent-supplied auth and proxy headers, then injects secret
// per svc.Auth. It returns the exact byte strings placed on the wire, in
// every encoded form used: for bearer and header the raw secret; for basic
// the raw secret and base64("user:secret"); for placeholder the raw secret
// and its path, query/form or JSON escaping where it was swapped. The
// caller scrubs them (and their further encodings) from the response.
func Apply(req *http.Request, svc *policy.Service, secret []byte) (injected [][]byte, err error) {
	if svc == nil {
		StripAgentAuth(req.Header, nil)
		return nil, ErrNoService
	}
	a := &svc.Auth
	if a.Kind != policy.AuthNone && len(secret) == 0 {
		return nil, fmt.Errorf("inject %s for service %q: %w", a.Kind, svc.Name, ErrEmptySecret)
	}
	switch a.Kind {
	case policy.AuthNone:
		StripAgentAuth(req.Header, svc)
		return nil, nil
	case policy.AuthBearer:
		if err := headerSafe(secret); err != nil {
			return nil, fmt.Errorf("inject bearer for service %q: %w", svc.Name, err)
		}
		StripAgentAuth(req.Header, svc)
		req.Header.Set("Authorization", "Bearer "+string(secret))
		return [][]byte{bytes.Clone(secret)}, nil
	case policy.AuthHeader:
		if a.Header == "" {
			return nil, fmt.Errorf("inject header for service %q: no header name", svc.Name)
		}
		if err := headerSafe(secret); err != nil {
			return nil, fmt.Errorf("inject header %s for service %q: %w", a.Header, svc.Name, err)
		}
		if err := headerSafe([]byte(a.Prefix)); err != nil {
			return nil, fmt.Errorf("inject header %s for service %q: prefix: %w", a.Header, svc.Name, err)
		}
		StripAgentAuth(req.Header, svc)
		req.Header.Set(a.Header, a.Prefix+string(secret))
		return [][]byte{bytes.Clone(secret)}, nil
	case policy.AuthBasic:
		if err := headerSafe(secret); err != nil {
			return nil, fmt.Errorf("inject basic auth for service %q: %w", svc.Name, err)
		}
		if strings.ContainsAny(a.Username, ":\r\n\x00") {
			return nil, fmt.Errorf("inject basic auth for service %q: username contains ':' or a control character", svc.Name)
		}
		token := base64.StdEncoding.EncodeToString(append([]byte(a.Username+":"), secret...))
		StripAgentAuth(req.Header, svc)
		req.Header.Set("Authorization", "Basic "+token)
		return [][]byte{bytes.Clone(secret), []byte(token)}, nil
	case policy.AuthPlaceholder:
		injected, err := swapPlaceholder(req, a, secret)
		if err != nil {
			return nil, fmt.Errorf("swap placeholder for service %q: %w", svc.Name, err)
		}
		return injected, nil
	default:
		return nil, fmt.Errorf("inject for service %q: unknown auth kind %q", svc.Name, a.Kind)
	}
}

// StripAgentAuth deletes what an agent may have sent to authenticate:
// Authorization, Proxy-Authorization and every other Proxy-* header, and the
// service's own auth header. For a placeholder service the header the
// placeholder is swapped in is kept (even when it is Authorization): the
// swap happens in place. svc may be nil.
func StripAgentAuth(h http.Header, svc *policy.Service) {
	keep := ""
	if svc != nil && svc.Auth.Kind == policy.AuthPlaceholder && svc.Auth.Header != "" && hasPlace(&svc.Auth, policy.InHeader) {
		keep = textproto.CanonicalMIMEHeaderKey(svc.Auth.Header)
	}
	for k := range h {
		if strings.EqualFold(k, keep) {
			continue
		}
		if strings.EqualFold(k, "Authorization") || len(k) >= 6 && strings.EqualFold(k[:6], "Proxy-") {
			delete(h, k)
		}
	}
	if svc != nil && svc.Auth.Header != "" && svc.Auth.Kind != policy.AuthPlaceholder {
		h.Del(svc.Auth.Header)
		for k := range h { // a non-canonical spelling set directly in the map
			if strings.EqualFold(k, svc.Auth.Header) {
				delete(h, k)
			}
		}
	}
}

// headerSafe refuses bytes that cannot appear in a header value: controls
// other than tab, and DEL. The error names neither the byte's position nor
// the value.
func headerSafe(b []byte) error {
	for _, c := range b {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return ErrHeaderUnsafe
		}
	}
	return nil
}

func hasPlace(a *policy.Auth, l policy.Location) bool {
	for _, x := range a.In {
		if x == l {
			return true
		}
	}
	return false
}

// forms collects injected byte strings without duplicates.
type forms [][]byte

func (f *forms) add(b []byte) {
	for _, x := range *f {
		if bytes.Equal(x, b) {
			return
		}
	}
	*f = append(*f, b)
}
