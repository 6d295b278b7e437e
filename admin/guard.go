package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/agentvault/agent-vault/admin/api"
)

// MaxBodyBytes caps every request body.
const MaxBodyBytes = 1 << 20

// loopbackNames may always appear in the Host header.
var loopbackNames = []string{"localhost", "127.0.0.1", "::1"}

// checkHost defends against DNS rebinding: a browser tricked into sending a
// request to this listener under an attacker's name carries that name in
// Host. Allowed are the loopback names, the address the connection arrived
// on, and Config.AllowedHosts.
func (s *Server) checkHost(r *http.Request) error {
	if r.Host == "" {
		return errorf(http.StatusBadRequest, api.CodeBadHost, "missing Host header")
	}
	if !s.hostAllowed(r, hostOnly(r.Host)) {
		return errorf(http.StatusForbidden, api.CodeBadHost,
			fmt.Sprintf("host %q is not an address of this server; use its IP address or localhost", r.Host))
	}
	return nil
}

func (s *Server) hostAllowed(r *http.Request, host string) bool {
	for _, n := range loopbackNames {
		if host == n {
			return true
		}
	}
	for _, n := range s.cfg.AllowedHosts {
		if host == hostOnly(n) {
			return true
		}
	}
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if tcp, ok := la.(*net.TCPAddr); ok && tcp.IP.String() == host {
			return true
		}
	}
	return false
}

// hostOnly returns the lower-case host of a host[:port] without brackets or
// a trailing dot.
func hostOnly(hostport string) string {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return strings.ToLower(strings.TrimSuffix(h, "."))
}

// checkOrigin refuses state-changing requests a browser sends from another
// origin. Requests without Origin (command-line clients) pass: they carry a
// bearer token a foreign page cannot know.
func checkOrigin(r *http.Request) error {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return nil
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return errorf(http.StatusForbidden, api.CodeBadOrigin, "cross-site request refused")
	}
	origin := r.Header.Get("Origin")
	if origin == "" || nullOriginSameSite(r) {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || !strings.EqualFold(u.Host, r.Host) {
		return errorf(http.StatusForbidden, api.CodeBadOrigin,
			fmt.Sprintf("origin %q is not this server; send the request from the admin UI or a command-line client", origin))
	}
	return nil
}

// nullOriginSameSite reports a browser's same-origin POST from a page whose
// Referrer-Policy is no-referrer (as the UI's pages are): the Fetch
// standard then sends "Origin: null", while Sec-Fetch-Site, which no page
// can set, still says same-origin. Without Sec-Fetch-Site, null stays
// refused.
func nullOriginSameSite(r *http.Request) bool {
	return r.Header.Get("Origin") == "null" && r.Header.Get("Sec-Fetch-Site") == "same-origin" &&
		len(r.Header.Values("Origin")) == 1 && len(r.Header.Values("Sec-Fetch-Site")) == 1
}

// decodeJSON reads one JSON object of type T from the body: at most
// MaxBodyBytes, Content-Type application/json, no unknown fields, nothing
// after it.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		return errorf(http.StatusUnsupportedMediaType, api.CodeUnsupportedType,
			"send the body as JSON with Content-Type: application/json")
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badJSON(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return err
		}
		return errorf(http.StatusBadRequest, api.CodeBadRequest, "request body holds more than one JSON value")
	}
	return nil
}

// badJSON turns a decoding error into a 400 whose message names the problem
// but never echoes the body (it may hold a secret).
func badJSON(err error) error {
	var tooLarge *http.MaxBytesError
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooLarge):
		return err
	case errors.Is(err, io.EOF):
		return errorf(http.StatusBadRequest, api.CodeBadRequest, "request body is empty; send a JSON object")
	case errors.As(err, &syntax), errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(http.StatusBadRequest, api.CodeBadRequest, "request body is not valid JSON")
	case errors.As(err, &typ):
		return errorf(http.StatusBadRequest, api.CodeBadRequest,
			fmt.Sprintf("field %q must be of JSON type %s", typ.Field, typ.Type))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return errorf(http.StatusBadRequest, api.CodeBadRequest,
			strings.TrimPrefix(err.Error(), "json: ")+" (not part of this API)")
	}
	return errorf(http.StatusBadRequest, api.CodeBadRequest, "request body cannot be decoded")
}
