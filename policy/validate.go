package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// ValidationError names the field that is wrong and why. Messages never
// contain credential values (a Service holds none).
type ValidationError struct {
	Field   string
	Message string
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Message }

func invalid(field, format string, args ...any) error {
	return &ValidationError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// ReservedHost is the name agents use to reach the broker itself; no service
// may claim it.
const ReservedHost = "agent-vault.internal"

// NormalizeHost lowercases a host name and strips one trailing dot, the form
// every comparison in this package uses.
func NormalizeHost(h string) string {
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		if c := h[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(h)
		}
	}
	return h
}

// ValidName checks a vault, service, agent or credential name: 1 to 64
// characters of letters, digits, '-', '_' and '.', starting with a letter or
// digit.
func ValidName(field, name string) error {
	if name == "" {
		return invalid(field, "must not be empty")
	}
	if len(name) > 64 {
		return invalid(field, "%d characters is too long (at most 64)", len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '-' || c == '_' || c == '.')
		if !ok {
			return invalid(field, "%q: use letters, digits, '-', '_' and '.', starting with a letter or digit", name)
		}
	}
	return nil
}

// ValidHostName checks an exact DNS host name (already normalized): labels of
// letters, digits and hyphens, at most 63 bytes each and 253 in all, at least
// two labels, not an IP address.
func ValidHostName(h string) error {
	if h == "" {
		return errors.New("empty host")
	}
	if len(h) > 253 {
		return fmt.Errorf("host is %d bytes long (at most 253)", len(h))
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return fmt.Errorf("%q is an IP address; services are named by host name (the TLS SNI)", h)
	}
	labels := strings.Split(h, ".")
	if len(labels) < 2 {
		return fmt.Errorf("%q needs at least two labels (like api.example.com)", h)
	}
	for _, l := range labels {
		if l == "" {
			return fmt.Errorf("%q has an empty label", h)
		}
		if len(l) > 63 {
			return fmt.Errorf("%q has a label longer than 63 bytes", h)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("%q has a label starting or ending with '-'", h)
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%q contains %q; use letters, digits, '-' and '.'", h, string(rune(c)))
			}
		}
	}
	return nil
}

// ValidHostPattern checks a service host: an exact name or "*." followed by a
// name of at least two labels ("*.example.com"; "*.com" is refused).
func ValidHostPattern(p string) error {
	if p != NormalizeHost(p) {
		return fmt.Errorf("%q must be lower case without a trailing dot", p)
	}
	if rest, ok := strings.CutPrefix(p, "*."); ok {
		if strings.Contains(rest, "*") {
			return fmt.Errorf("%q: only one leading '*.' is allowed", p)
		}
		return ValidHostName(rest)
	}
	if strings.Contains(p, "*") {
		return fmt.Errorf("%q: a wildcard is only allowed as a leading '*.' (like *.example.com)", p)
	}
	if p == ReservedHost {
		return fmt.Errorf("%q is reserved for the broker itself", p)
	}
	return ValidHostName(p)
}

var knownMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}

// Validate checks a service and returns the first problem found as a
// *ValidationError. It normalizes nothing: callers normalize with Normalize
// first.
func (s *Service) Validate() error {
	if err := ValidName("vault", s.Vault); err != nil {
		return err
	}
	if err := ValidName("name", s.Name); err != nil {
		return err
	}
	if err := ValidHostPattern(s.Host); err != nil {
		return invalid("host", "%v", err)
	}
	if s.Port < 0 || s.Port > 65535 {
		return invalid("port", "%d is out of range (1-65535, or 0 for any)", s.Port)
	}
	if s.Path != "" {
		if !strings.HasPrefix(s.Path, "/") {
			return invalid("path", "%q must start with '/'", s.Path)
		}
		if strings.ContainsAny(s.Path, "?#\r\n\x00 ") {
			return invalid("path", "%q must be a plain path prefix (no query, fragment, spaces or control characters)", s.Path)
		}
		for _, seg := range strings.Split(s.Path, "/") {
			if seg == ".." || seg == "." {
				return invalid("path", "%q must not contain '.' or '..' segments", s.Path)
			}
		}
	}
	for _, m := range s.Methods {
		if !slices.Contains(knownMethods, m) {
			return invalid("methods", "%q is not an HTTP method (use %s)", m, strings.Join(knownMethods, ", "))
		}
	}
	return s.Auth.validate()
}

func (a *Auth) validate() error {
	needCredential := func() error {
		if a.Credential == "" {
			return invalid("credential", "auth %q needs a credential name", a.Kind)
		}
		return ValidName("credential", a.Credential)
	}
	switch a.Kind {
	case AuthBearer:
		return needCredential()
	case AuthHeader:
		if err := validHeaderName(a.Header); err != nil {
			return err
		}
		if strings.ContainsAny(a.Prefix, "\r\n\x00") {
			return invalid("prefix", "must not contain CR, LF or NUL")
		}
		return needCredential()
	case AuthBasic:
		if strings.ContainsAny(a.Username, ":\r\n\x00") {
			return invalid("username", "must not contain ':', CR, LF or NUL")
		}
		return needCredential()
	case AuthPlaceholder:
		if len(a.Placeholder) < 4 {
			return invalid("placeholder", "must be at least 4 characters, so it cannot occur by chance")
		}
		if strings.ContainsAny(a.Placeholder, "\r\n\x00") {
			return invalid("placeholder", "must not contain CR, LF or NUL")
		}
		if len(a.In) == 0 {
			return invalid("in", "say where the placeholder may be swapped: path, query, header, body")
		}
		for _, l := range a.In {
			switch l {
			case InPath, InQuery, InBody:
			case InHeader:
				if err := validHeaderName(a.Header); err != nil {
					return err
				}
			default:
				return invalid("in", "%q is not a place (use path, query, header, body)", l)
			}
		}
		return needCredential()
	case AuthNone:
		if a.Credential != "" {
			return invalid("credential", "auth none injects nothing; drop the credential")
		}
		return nil
	case "":
		return invalid("auth", "missing (use bearer, header, basic, placeholder or none)")
	default:
		return invalid("auth", "%q is not an auth kind (use bearer, header, basic, placeholder or none)", a.Kind)
	}
}

// headers an agent or a service may never set: the broker owns them.
var reservedHeaders = []string{"host", "connection", "content-length", "transfer-encoding", "upgrade", "te", "trailer", "keep-alive", "proxy-connection"}

func validHeaderName(h string) error {
	if h == "" {
		return invalid("header", "name the header (like X-Api-Key)")
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return invalid("header", "%q is not a valid header name", h)
		}
	}
	if slices.Contains(reservedHeaders, strings.ToLower(h)) || strings.HasPrefix(strings.ToLower(h), "proxy-") {
		return invalid("header", "%q is managed by the broker and cannot carry a credential", h)
	}
	return nil
}

// Normalize puts a service in canonical form: host lower case without a
// trailing dot, methods upper case, sorted and unique, "/" path as "".
func (s *Service) Normalize() {
	s.Host = NormalizeHost(strings.TrimSpace(s.Host))
	if s.Path == "/" {
		s.Path = ""
	}
	for i, m := range s.Methods {
		s.Methods[i] = strings.ToUpper(strings.TrimSpace(m))
	}
	slices.Sort(s.Methods)
	s.Methods = slices.Compact(s.Methods)
}
