package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
)

// DefaultAddr is where the admin API listens unless told otherwise.
const DefaultAddr = "http://127.0.0.1:14321"

// maxResponseBytes bounds what the client reads of one response.
const maxResponseBytes = 64 << 20

// Client talks to one admin API server. It is safe for concurrent use once
// configured.
type Client struct {
	base  *url.URL
	token string
	hc    *http.Client
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient replaces the default HTTP client (30 s timeout).
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithToken sets the session token sent as Authorization: Bearer.
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// New returns a client of the server at baseURL ("http://127.0.0.1:14321";
// a bare host:port means http).
func New(baseURL string, opts ...Option) (*Client, error) {
	if baseURL == "" {
		baseURL = DefaultAddr
	}
	if !strings.Contains(baseURL, "://") {
		baseURL = "http://" + baseURL
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("parse server address %q: %w", baseURL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("server address %q: use http://HOST:PORT or https://HOST:PORT", baseURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	c := &Client{base: u, hc: &http.Client{Timeout: 30 * time.Second}}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// BaseURL returns the server address in canonical form.
func (c *Client) BaseURL() string { return c.base.String() }

// Token returns the session token the client sends ("" when none).
func (c *Client) Token() string { return c.token }

// SetToken replaces the session token.
func (c *Client) SetToken(token string) { c.token = token }

// APIError is an error response of the server.
type APIError struct {
	Status     int
	Code       string // one of the api.Code* constants
	Message    string
	RetryAfter time.Duration // for rate_limited

	health *api.Health // a 503 of /health carries the health document
}

func (e *APIError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("server answered %d %s", e.Status, e.Code)
	}
	return e.Message
}

// IsCode reports whether err is an *APIError with that code.
func IsCode(err error, code string) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == code
}

// do sends one request. in, if not nil, is sent as JSON; out, if not nil,
// receives the JSON response.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	u := *c.base
	u.Path += api.Prefix + path
	u.RawPath = ""
	if query != nil {
		u.RawQuery = query.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		return decodeError(resp, data)
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*[]byte); ok {
		*raw = data
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

func decodeError(resp *http.Response, data []byte) error {
	ae := &APIError{Status: resp.StatusCode}
	var eb api.ErrorBody
	var h api.Health
	if json.Unmarshal(data, &eb) == nil && eb.Error.Code != "" {
		ae.Code, ae.Message = eb.Error.Code, eb.Error.Message
	} else if json.Unmarshal(data, &h) == nil && h.Status != "" {
		ae.Code, ae.Message, ae.health = api.CodeUnavailable, "server not ready: "+h.Message, &h
	} else {
		ae.Code = http.StatusText(resp.StatusCode)
		ae.Message = fmt.Sprintf("server answered %s (not an agent-vault API response)", resp.Status)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		var secs int
		if _, err := fmt.Sscanf(ra, "%d", &secs); err == nil && secs > 0 {
			ae.RetryAfter = time.Duration(secs) * time.Second
		}
	}
	return ae
}

func seg(s string) string { return url.PathEscape(s) }
