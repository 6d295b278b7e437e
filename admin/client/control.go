package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/audit"
)

// CreateProposal proposes a service (with an agent token). Without
// req.Vault the agent's own vault is meant.
func (c *Client) CreateProposal(ctx context.Context, req api.ProposalCreate) (api.Proposal, error) {
	var p api.Proposal
	path := "/proposals"
	if req.Vault != "" {
		path = "/vaults/" + seg(req.Vault) + "/proposals"
	}
	err := c.do(ctx, http.MethodPost, path, nil, req, &p)
	return p, err
}

// Proposals lists proposals, newest first (an agent sees its own only).
func (c *Client) Proposals(ctx context.Context, f api.ProposalFilter) ([]api.Proposal, error) {
	var ps []api.Proposal
	err := c.do(ctx, http.MethodGet, "/proposals", f.Values(), nil, &ps)
	return ps, err
}

// Proposal returns one proposal with its content hash.
func (c *Client) Proposal(ctx context.Context, id uint64) (api.Proposal, error) {
	var p api.Proposal
	err := c.do(ctx, http.MethodGet, "/proposals/"+strconv.FormatUint(id, 10), nil, nil, &p)
	return p, err
}

// ApproveProposal applies a proposal; req.Hash must be the content hash of
// the proposal as reviewed.
func (c *Client) ApproveProposal(ctx context.Context, id uint64, req api.ProposalApprove) (api.Proposal, error) {
	var p api.Proposal
	err := c.do(ctx, http.MethodPost, "/proposals/"+strconv.FormatUint(id, 10)+"/approve", nil, req, &p)
	return p, err
}

// RejectProposal rejects a proposal.
func (c *Client) RejectProposal(ctx context.Context, id uint64, req api.ProposalReject) (api.Proposal, error) {
	var p api.Proposal
	err := c.do(ctx, http.MethodPost, "/proposals/"+strconv.FormatUint(id, 10)+"/reject", nil, req, &p)
	return p, err
}

// Users lists users (owner only).
func (c *Client) Users(ctx context.Context) ([]api.Account, error) {
	var us []api.Account
	err := c.do(ctx, http.MethodGet, "/users", nil, nil, &us)
	return us, err
}

// InviteUser invites a user and returns the one-time invite token.
func (c *Client) InviteUser(ctx context.Context, req api.UserInvite) (api.Invitation, error) {
	var inv api.Invitation
	err := c.do(ctx, http.MethodPost, "/users", nil, req, &inv)
	return inv, err
}

// GrantRole sets (or with role "" removes) a user's role.
func (c *Client) GrantRole(ctx context.Context, email string, req api.RoleGrant) (api.Account, error) {
	var a api.Account
	err := c.do(ctx, http.MethodPut, "/users/"+seg(email)+"/role", nil, req, &a)
	return a, err
}

// RemoveUser deletes a user and their sessions.
func (c *Client) RemoveUser(ctx context.Context, email string) error {
	return c.do(ctx, http.MethodDelete, "/users/"+seg(email), nil, nil, nil)
}

// AcceptInvite sets the invitee's password and logs in; the client keeps
// using the session.
func (c *Client) AcceptInvite(ctx context.Context, token, password string) (api.SessionToken, error) {
	var t api.SessionToken
	if err := c.do(ctx, http.MethodPost, "/invites/accept", nil, api.InviteAccept{Token: token, Password: password}, &t); err != nil {
		return t, err
	}
	c.token = t.Token
	return t, nil
}

// open sends a GET whose response is read as a stream (no overall timeout:
// ctx bounds it).
func (c *Client) open(ctx context.Context, path string, query url.Values, accept string, hdr http.Header) (*http.Response, error) {
	u := *c.base
	u.Path += api.Prefix + path
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Accept", accept)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	hc := *c.hc
	hc.Timeout = 0
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return nil, decodeError(resp, data)
	}
	return resp, nil
}

func streamValues(f api.AuditFilter, after uint64) url.Values {
	f.Limit, f.Cursor = 0, 0
	v := f.Values()
	if after > 0 {
		v.Set("after", strconv.FormatUint(after, 10))
	}
	return v
}

// AuditExport writes the rows matching f after row `after`, oldest first,
// as JSON lines to w, and returns how many it wrote.
func (c *Client) AuditExport(ctx context.Context, f api.AuditFilter, after uint64, w io.Writer) (int, error) {
	resp, err := c.open(ctx, "/audit/export", streamValues(f, after), "application/x-ndjson", nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if !json.Valid(line) {
			return n, fmt.Errorf("audit export: the server sent a line that is not JSON")
		}
		if _, err := w.Write(append(line, '\n')); err != nil {
			return n, fmt.Errorf("write export: %w", err)
		}
		n++
	}
	if err := sc.Err(); err != nil {
		return n, fmt.Errorf("audit export: %w", err)
	}
	return n, nil
}

// AuditStream follows the audit log live (server-sent events), calling fn
// for each row matching f, starting after row `after` (0: with the next new
// row), until ctx ends, fn returns an error (returned, except errStop), or
// the server ends the stream (nil).
func (c *Client) AuditStream(ctx context.Context, f api.AuditFilter, after uint64, fn func(audit.Event) error) error {
	resp, err := c.open(ctx, "/audit/stream", streamValues(f, after), "text/event-stream", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var data strings.Builder
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data.Len() == 0 {
				continue
			}
			var ev audit.Event
			if err := json.Unmarshal([]byte(data.String()), &ev); err != nil {
				return fmt.Errorf("audit stream: a row is not JSON: %w", err)
			}
			data.Reset()
			if err := fn(ev); err != nil {
				if err == ErrStop {
					return nil
				}
				return err
			}
		case strings.HasPrefix(line, "data:"):
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("audit stream: %w", err)
	}
	return nil
}

// ErrStop, returned by an AuditStream callback, ends the stream without
// an error.
var ErrStop = fmt.Errorf("stop the stream")
