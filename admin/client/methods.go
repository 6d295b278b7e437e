package client

import (
	"context"
	"errors"
	"net/http"

	"github.com/agentvault/agent-vault/admin/api"
)

// Health returns the server's health. A server that is up but not ready
// answers 503: Health then has Status "unavailable" and a Message, and the
// error is nil; an error means the server could not be asked.
func (c *Client) Health(ctx context.Context) (api.Health, error) {
	var h api.Health
	err := c.do(ctx, http.MethodGet, "/health", nil, nil, &h)
	var ae *APIError
	if errors.As(err, &ae) && ae.Status == http.StatusServiceUnavailable && ae.health != nil {
		return *ae.health, nil
	}
	return h, err
}

// Setup creates the first owner and returns a session; the client keeps
// using it.
func (c *Client) Setup(ctx context.Context, email, password string) (api.SessionToken, error) {
	var t api.SessionToken
	if err := c.do(ctx, http.MethodPost, "/setup", nil, api.LoginRequest{Email: email, Password: password}, &t); err != nil {
		return t, err
	}
	c.token = t.Token
	return t, nil
}

// Login starts a session; the client keeps using it.
func (c *Client) Login(ctx context.Context, email, password string) (api.SessionToken, error) {
	var t api.SessionToken
	if err := c.do(ctx, http.MethodPost, "/login", nil, api.LoginRequest{Email: email, Password: password}, &t); err != nil {
		return t, err
	}
	c.token = t.Token
	return t, nil
}

// Logout ends the client's session.
func (c *Client) Logout(ctx context.Context) error {
	if err := c.do(ctx, http.MethodDelete, "/logout", nil, nil, nil); err != nil {
		return err
	}
	c.token = ""
	return nil
}

// WhoAmI returns who the token belongs to: a user (kind "user") or an
// agent (kind "agent").
func (c *Client) WhoAmI(ctx context.Context) (api.Whoami, error) {
	var u api.Whoami
	err := c.do(ctx, http.MethodGet, "/session", nil, nil, &u)
	return u, err
}

// CACert returns the root CA certificate in PEM.
func (c *Client) CACert(ctx context.Context) ([]byte, error) {
	var pem []byte
	err := c.do(ctx, http.MethodGet, "/ca.pem", nil, nil, &pem)
	return pem, err
}

// Vaults lists vaults by name.
func (c *Client) Vaults(ctx context.Context) ([]api.Vault, error) {
	var vs []api.Vault
	err := c.do(ctx, http.MethodGet, "/vaults", nil, nil, &vs)
	return vs, err
}

// CreateVault creates a vault.
func (c *Client) CreateVault(ctx context.Context, name string) (api.Vault, error) {
	var v api.Vault
	err := c.do(ctx, http.MethodPost, "/vaults", nil, api.VaultCreate{Name: name}, &v)
	return v, err
}

// DeleteVault deletes a vault with everything in it.
func (c *Client) DeleteVault(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/vaults/"+seg(name), nil, nil, nil)
}

// Credentials lists a vault's credentials (names and times, never values).
func (c *Client) Credentials(ctx context.Context, vault string) ([]api.Credential, error) {
	var cs []api.Credential
	err := c.do(ctx, http.MethodGet, "/vaults/"+seg(vault)+"/credentials", nil, nil, &cs)
	return cs, err
}

// SetCredential stores a credential's value. The answer describes the
// credential without its value.
func (c *Client) SetCredential(ctx context.Context, vault, key string, value []byte) (api.Credential, error) {
	var cr api.Credential
	err := c.do(ctx, http.MethodPut, "/vaults/"+seg(vault)+"/credentials/"+seg(key), nil,
		api.CredentialValue{Value: string(value)}, &cr)
	return cr, err
}

// DeleteCredential deletes a credential.
func (c *Client) DeleteCredential(ctx context.Context, vault, key string) error {
	return c.do(ctx, http.MethodDelete, "/vaults/"+seg(vault)+"/credentials/"+seg(key), nil, nil, nil)
}

// Services lists a vault's services by name.
func (c *Client) Services(ctx context.Context, vault string) ([]api.Service, error) {
	var ss []api.Service
	err := c.do(ctx, http.MethodGet, "/vaults/"+seg(vault)+"/services", nil, nil, &ss)
	return ss, err
}

// AddService adds a service to svc.Vault and returns it normalized.
func (c *Client) AddService(ctx context.Context, svc api.Service) (api.Service, error) {
	var out api.Service
	err := c.do(ctx, http.MethodPost, "/vaults/"+seg(svc.Vault)+"/services", nil, svc, &out)
	return out, err
}

// DeleteService deletes a service.
func (c *Client) DeleteService(ctx context.Context, vault, name string) error {
	return c.do(ctx, http.MethodDelete, "/vaults/"+seg(vault)+"/services/"+seg(name), nil, nil, nil)
}

// Agents lists the agents of a vault, or of every vault when vault is "".
func (c *Client) Agents(ctx context.Context, vault string) ([]api.Agent, error) {
	p := "/agents"
	if vault != "" {
		p = "/vaults/" + seg(vault) + "/agents"
	}
	var as []api.Agent
	err := c.do(ctx, http.MethodGet, p, nil, nil, &as)
	return as, err
}

// CreateAgent creates an agent in vault and returns its token, which the
// server never shows again.
func (c *Client) CreateAgent(ctx context.Context, vault string, a api.AgentCreate) (api.AgentToken, error) {
	var t api.AgentToken
	err := c.do(ctx, http.MethodPost, "/vaults/"+seg(vault)+"/agents", nil, a, &t)
	return t, err
}

// RevokeAgent revokes an agent (agent names are unique across vaults).
func (c *Client) RevokeAgent(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodPost, "/agents/"+seg(name)+"/revoke", nil, nil, nil)
}

// DeleteAgent deletes an agent.
func (c *Client) DeleteAgent(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/agents/"+seg(name), nil, nil, nil)
}

// Audit returns one page of audit rows, newest first.
func (c *Client) Audit(ctx context.Context, f api.AuditFilter) (api.AuditPage, error) {
	var p api.AuditPage
	err := c.do(ctx, http.MethodGet, "/audit", f.Values(), nil, &p)
	return p, err
}

// AuditVerify asks the server to check the audit hash chain.
func (c *Client) AuditVerify(ctx context.Context) (api.AuditVerify, error) {
	var v api.AuditVerify
	err := c.do(ctx, http.MethodGet, "/audit/verify", nil, nil, &v)
	return v, err
}
