// Package inject owns putting a credential on an outbound request: it strips
// whatever the agent sent for authentication (Authorization, every Proxy-*
// header, the service's own auth header) and then sets the credential the
// way the service's policy.Auth says: a bearer token, a named header with an
// optional prefix, HTTP basic auth, or the agent's placeholder swapped for
// the real value in exactly the declared places (path, query values, one
// named header, JSON string values or form values of the body), each with
// the escaping of its place. Apply returns every byte string it placed on
// the wire, so the caller can scrub them from the response.
//
// A placeholder found nowhere leaves the request unchanged (apart from the
// stripped headers) and Apply returns no forms: the upstream then sees the
// agent's placeholder, which is harmless, and rejects it. Bodies are only
// read for JSON and form content types without a Content-Encoding, up to
// MaxBodyBytes. On any error the request is in an undefined state and must
// not be forwarded. Errors never contain the secret.
//
// It is pure request rewriting for httputil.ReverseProxy.Rewrite; it imports
// only policy of ours.
package inject
