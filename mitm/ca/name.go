package ca

import (
	"fmt"
	"net/netip"
	"strings"
)

// normalizeName returns the cache key of a server name: lower case, without
// one trailing dot; IP addresses in canonical form (and ip set). It refuses
// anything that is neither a DNS host name (letters, digits and hyphens,
// labels of 1 to 63 bytes not starting or ending with a hyphen, at most 253
// bytes) nor an IP address without a zone. Error messages do not repeat the
// name: it comes from the network and may be anything.
func normalizeName(name string) (string, netip.Addr, error) {
	name = strings.TrimSuffix(name, ".")
	if name == "" {
		return "", netip.Addr{}, fmt.Errorf("%w: empty", ErrInvalidName)
	}
	if len(name) > 253 {
		return "", netip.Addr{}, fmt.Errorf("%w: %d bytes long (at most 253)", ErrInvalidName, len(name))
	}
	if c := name[0]; c >= '0' && c <= '9' || c == ':' || c == '[' {
		s := strings.TrimSuffix(strings.TrimPrefix(name, "["), "]")
		if ip, err := netip.ParseAddr(s); err == nil {
			if ip.Zone() != "" {
				return "", netip.Addr{}, fmt.Errorf("%w: IP address with a zone", ErrInvalidName)
			}
			ip = ip.Unmap()
			if s := ip.String(); s != name {
				name = s
			}
			return name, ip, nil
		}
	}
	upper := false
	label := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c >= 'A' && c <= 'Z':
			upper = true
		case c == '-':
			if label == 0 || i+1 == len(name) || name[i+1] == '.' {
				return "", netip.Addr{}, fmt.Errorf("%w: a label starts or ends with '-'", ErrInvalidName)
			}
		case c == '.':
			if label == 0 {
				return "", netip.Addr{}, fmt.Errorf("%w: empty label", ErrInvalidName)
			}
			label = 0
			continue
		default:
			return "", netip.Addr{}, fmt.Errorf("%w: byte 0x%02x is not allowed in a host name", ErrInvalidName, c)
		}
		label++
		if label > 63 {
			return "", netip.Addr{}, fmt.Errorf("%w: a label is longer than 63 bytes", ErrInvalidName)
		}
	}
	if label == 0 {
		return "", netip.Addr{}, fmt.Errorf("%w: empty label", ErrInvalidName)
	}
	if upper {
		name = strings.ToLower(name)
	}
	return name, netip.Addr{}, nil
}
