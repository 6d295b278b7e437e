package admin

import (
	"fmt"
	"net/http"
	"net/netip"
	"path"
	"strings"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/store"
)

// pathName reads a path wildcard and checks it is a valid name, so bad names
// fail with 400 before reaching the store.
func pathName(r *http.Request, wildcard, field string) (string, error) {
	v := r.PathValue(wildcard)
	if err := policy.ValidName(field, v); err != nil {
		return "", err
	}
	return v, nil
}

// vaultAndName reads the path's vault and the item named by wildcard (checked
// as field), like /vaults/{vault}/credentials/{key}.
func vaultAndName(r *http.Request, wildcard, field string) (vault, name string, err error) {
	if vault, err = pathName(r, "vault", "vault"); err != nil {
		return "", "", err
	}
	if name, err = pathName(r, wildcard, field); err != nil {
		return "", "", err
	}
	return vault, name, nil
}

// noContent answers 204 when err (the store call's) is nil, else returns it.
func noContent(w http.ResponseWriter, err error) error {
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// listVaults lists the vaults the caller holds a role in.
func (s *Server) listVaults(w http.ResponseWriter, r *http.Request, p *principal) error {
	vs, err := s.cfg.Store.Vaults()
	if err != nil {
		return err
	}
	out := make([]api.Vault, 0, len(vs))
	for _, v := range vs {
		if !p.allowed(v.Name, roleRead) {
			continue
		}
		out = append(out, api.Vault{Name: v.Name, CreatedAt: v.CreatedAt, CreatedBy: v.CreatedBy})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) createVault(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req api.VaultCreate
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if err := policy.ValidName("vault", req.Name); err != nil {
		return err
	}
	v, err := s.cfg.Store.CreateVault(p.actor(), req.Name)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, api.Vault{Name: v.Name, CreatedAt: v.CreatedAt, CreatedBy: v.CreatedBy})
	return nil
}

func (s *Server) deleteVault(w http.ResponseWriter, r *http.Request, p *principal) error {
	name, err := pathName(r, "vault", "vault")
	if err != nil {
		return err
	}
	return noContent(w, s.cfg.Store.DeleteVault(p.actor(), name))
}

func toAPICredential(c store.Credential) api.Credential {
	return api.Credential{Vault: c.Vault, Key: c.Key, CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt, UpdatedBy: c.UpdatedBy, Undecryptable: c.Undecryptable}
}

func (s *Server) listCredentials(w http.ResponseWriter, r *http.Request, _ *principal) error {
	vault, err := pathName(r, "vault", "vault")
	if err != nil {
		return err
	}
	cs, err := s.cfg.Store.Credentials(vault)
	if err != nil {
		return err
	}
	out := make([]api.Credential, 0, len(cs))
	for _, c := range cs {
		out = append(out, toAPICredential(c))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// maxCredentialBytes bounds one credential value (a private key in PEM fits).
const maxCredentialBytes = 64 << 10

func (s *Server) setCredential(w http.ResponseWriter, r *http.Request, p *principal) error {
	vault, key, err := vaultAndName(r, "key", "credential")
	if err != nil {
		return err
	}
	var req api.CredentialValue
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if err := checkValue(req.Value); err != nil {
		return err
	}
	c, err := s.cfg.Store.SetCredential(p.actor(), vault, key, []byte(req.Value))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toAPICredential(c))
	return nil
}

// checkValue checks a credential value sent to the API.
func checkValue(v string) error {
	switch {
	case v == "":
		return errorf(http.StatusBadRequest, api.CodeInvalid, "invalid value: must not be empty")
	case len(v) > maxCredentialBytes:
		return errorf(http.StatusBadRequest, api.CodeInvalid,
			fmt.Sprintf("invalid value: longer than %d bytes", maxCredentialBytes))
	case strings.ContainsAny(v, "\r\n\x00"):
		// The broker refuses CR/LF at injection; refuse them at the door too.
		// Trailing newlines from `echo` are trimmed by the CLI.
		return errorf(http.StatusBadRequest, api.CodeInvalid, "invalid value: must not contain CR, LF or NUL")
	}
	return nil
}

func (s *Server) deleteCredential(w http.ResponseWriter, r *http.Request, p *principal) error {
	vault, key, err := vaultAndName(r, "key", "credential")
	if err != nil {
		return err
	}
	return noContent(w, s.cfg.Store.DeleteCredential(p.actor(), vault, key))
}

func (s *Server) listServices(w http.ResponseWriter, r *http.Request, _ *principal) error {
	vault, err := pathName(r, "vault", "vault")
	if err != nil {
		return err
	}
	svcs, err := s.cfg.Store.Services(vault)
	if err != nil {
		return err
	}
	if svcs == nil {
		svcs = []policy.Service{}
	}
	writeJSON(w, http.StatusOK, svcs)
	return nil
}

func (s *Server) addService(w http.ResponseWriter, r *http.Request, p *principal) error {
	vault, err := pathName(r, "vault", "vault")
	if err != nil {
		return err
	}
	var svc policy.Service
	if err := decodeJSON(w, r, &svc); err != nil {
		return err
	}
	if svc.Vault != "" && svc.Vault != vault {
		return errorf(http.StatusBadRequest, api.CodeInvalid,
			fmt.Sprintf("invalid vault: the body names %q but the path %q", svc.Vault, vault))
	}
	svc.Vault = vault
	svc.Normalize()
	if err := svc.Validate(); err != nil {
		return err
	}
	out, err := s.cfg.Store.AddService(p.actor(), svc)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, out)
	return nil
}

func (s *Server) deleteService(w http.ResponseWriter, r *http.Request, p *principal) error {
	vault, name, err := vaultAndName(r, "name", "name")
	if err != nil {
		return err
	}
	return noContent(w, s.cfg.Store.DeleteService(p.actor(), vault, name))
}

func toAPIAgent(a store.AgentRecord) api.Agent {
	return api.Agent{Name: a.Name, Vault: a.Vault, Sources: a.Sources, Cgroup: a.Cgroup, Revoked: a.Revoked,
		ExpiresAt: a.ExpiresAt, CreatedAt: a.CreatedAt, CreatedBy: a.CreatedBy}
}

// listAgents serves both /vaults/{vault}/agents and /agents (every vault
// the caller may read).
func (s *Server) listAgents(w http.ResponseWriter, r *http.Request, p *principal) error {
	vault, err := pathVault(r)
	if err != nil {
		return err
	}
	as, err := s.cfg.Store.Agents(vault)
	if err != nil {
		return err
	}
	out := make([]api.Agent, 0, len(as))
	for _, a := range as {
		if p.allowed(a.Vault, roleRead) {
			out = append(out, toAPIAgent(a))
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// agentCreate is api.AgentCreate with sources as strings, so a bad CIDR gets
// a message naming it.
type agentCreate struct {
	Name      string    `json:"name"`
	Sources   []string  `json:"sources"`
	Cgroup    string    `json:"cgroup"`
	ExpiresAt time.Time `json:"expires_at"`
}

// maxSources bounds the source prefixes of one agent.
const maxSources = 64

func (s *Server) createAgent(w http.ResponseWriter, r *http.Request, p *principal) error {
	vault, err := pathName(r, "vault", "vault")
	if err != nil {
		return err
	}
	var req agentCreate
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	a := policy.Agent{Name: req.Name, Vault: vault, ExpiresAt: req.ExpiresAt}
	if err := policy.ValidName("name", a.Name); err != nil {
		return err
	}
	if !a.ExpiresAt.IsZero() && !a.ExpiresAt.After(s.now()) {
		return errorf(http.StatusBadRequest, api.CodeInvalid, "invalid expires_at: must be in the future")
	}
	if a.Sources, err = parseSources(req.Sources); err != nil {
		return err
	}
	if a.Cgroup, err = cleanCgroup(req.Cgroup); err != nil {
		return err
	}
	tok, h, err := newToken(agentTokenPrefix)
	if err != nil {
		return err
	}
	a.TokenHash = h
	rec, err := s.cfg.Store.CreateAgent(p.actor(), a)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, api.AgentToken{Name: rec.Name, Vault: rec.Vault, Token: tok})
	return nil
}

// parseSources parses CIDRs (a bare address means a single host), refusing
// duplicates and prefixes that would capture everyone.
func parseSources(in []string) ([]netip.Prefix, error) {
	if len(in) > maxSources {
		return nil, errorf(http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("invalid sources: at most %d", maxSources))
	}
	var out []netip.Prefix
	for _, s := range in {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			addr, aerr := netip.ParseAddr(s)
			if aerr != nil || addr.Zone() != "" {
				return nil, errorf(http.StatusBadRequest, api.CodeInvalid,
					fmt.Sprintf("invalid source %q: use a CIDR like 10.0.0.5/32 or fd00::/64, or an address (no zone)", s))
			}
			pfx = netip.PrefixFrom(addr, addr.BitLen())
		}
		pfx = netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()-unmapBits(pfx)).Masked()
		if pfx.Bits() == 0 {
			return nil, errorf(http.StatusBadRequest, api.CodeInvalid,
				fmt.Sprintf("invalid source %q: a /0 would make every address this agent", s))
		}
		for _, o := range out {
			if o == pfx {
				return nil, errorf(http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("invalid sources: %s is listed twice", pfx))
			}
		}
		out = append(out, pfx)
	}
	return out, nil
}

// unmapBits is how many prefix bits an IPv4-mapped IPv6 prefix loses when
// written as IPv4.
func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return min(96, p.Bits())
	}
	return 0
}

// cleanCgroup checks a cgroup path below the cgroup2 mount and returns it in
// the store's canonical form, without leading or trailing slashes
// ("agents.slice/x"); "" stays "".
func cleanCgroup(cg string) (string, error) {
	if cg == "" {
		return "", nil
	}
	bad := func(why string) error {
		return errorf(http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("invalid cgroup %q: %s", cg, why))
	}
	if len(cg) > 4096 {
		return "", bad("too long")
	}
	if strings.ContainsAny(cg, "\x00\r\n") {
		return "", bad("control characters")
	}
	for _, seg := range strings.Split(strings.Trim(cg, "/"), "/") {
		if seg == ".." || seg == "." {
			return "", bad("'.' and '..' are not allowed; give the path below the cgroup2 mount")
		}
	}
	c := strings.Trim(path.Clean("/"+cg), "/")
	if c == "" {
		return "", bad("the root cgroup would make every process this agent")
	}
	return c, nil
}

// agentTarget reads the agent named in the path, checks it belongs to the
// path's vault if one is given (agent names are unique across vaults), and
// that the caller may manage that vault.
func (s *Server) agentTarget(r *http.Request, p *principal) (string, error) {
	name, err := pathName(r, "name", "name")
	if err != nil {
		return "", err
	}
	want, err := pathVault(r)
	if err != nil {
		return "", err
	}
	as, err := s.cfg.Store.Agents(want)
	if err != nil {
		return "", err
	}
	for _, a := range as {
		if a.Name == name {
			if err := p.require(a.Vault, roleManage); err != nil {
				return "", err
			}
			return name, nil
		}
	}
	if want != "" {
		return "", fmt.Errorf("agent %q in vault %q: %w", name, want, store.ErrNotFound)
	}
	return "", fmt.Errorf("agent %q: %w", name, store.ErrNotFound)
}

func (s *Server) revokeAgent(w http.ResponseWriter, r *http.Request, p *principal) error {
	name, err := s.agentTarget(r, p)
	if err != nil {
		return err
	}
	return noContent(w, s.cfg.Store.RevokeAgent(p.actor(), name))
}

func (s *Server) deleteAgent(w http.ResponseWriter, r *http.Request, p *principal) error {
	name, err := s.agentTarget(r, p)
	if err != nil {
		return err
	}
	return noContent(w, s.cfg.Store.DeleteAgent(p.actor(), name))
}
