package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/store"
)

// principal is who is behind a request: a logged-in human (acct) or an
// agent presenting its token (agent).
type principal struct {
	acct      store.Account
	agent     *store.AgentRecord
	tokenHash [32]byte
	expires   time.Time
	cookie    bool // authenticated by the session cookie (CSRF applies)
}

func (p *principal) isAgent() bool { return p.agent != nil }

func (p *principal) actor() audit.Actor {
	if p.agent != nil {
		return audit.Actor{Kind: audit.ActorAgent, Name: p.agent.Name}
	}
	return audit.Actor{Kind: audit.ActorUser, Name: p.acct.Email}
}

// allowed is the one place roles meet permissions: may this principal act
// with at least role in vault ("" asks for the instance-wide role)? Agents
// hold no role.
func (p *principal) allowed(vault string, role store.Role) bool {
	if p == nil || p.agent != nil {
		return false
	}
	have := p.acct.Role
	if vault != "" {
		have = p.acct.VaultRole(vault)
	}
	return store.RoleRank(have) >= store.RoleRank(role)
}

// require is allowed as an error.
func (p *principal) require(vault string, role store.Role) error {
	if p.allowed(vault, role) {
		return nil
	}
	if p != nil && p.agent != nil {
		return errAgentToken
	}
	where := "instance-wide"
	if vault != "" {
		where = "in vault " + vault
	}
	return errorf(http.StatusForbidden, api.CodeForbidden,
		fmt.Sprintf("your role does not allow this: it needs %s %s", role, where))
}

// anyVault reports whether the principal has at least role instance-wide
// or in some vault.
func (p *principal) anyVault(role store.Role) bool {
	if p.allowed("", role) {
		return true
	}
	if p == nil || p.agent != nil {
		return false
	}
	for v := range p.acct.VaultRoles {
		if p.allowed(v, role) {
			return true
		}
	}
	return false
}

var (
	errAgentToken = errorf(http.StatusForbidden, api.CodeAgentToken,
		"an agent token may only create proposals, list its own proposals and ask who it is; a human approves")
	errCSRF = errorf(http.StatusForbidden, api.CodeCSRF,
		"missing or wrong "+api.CSRFHeader+" header for a cookie session")
)

// admit checks the route's access rule for an authenticated principal.
func (p *principal) admit(r *http.Request, rt route) error {
	if p.agent != nil && rt.access != agentOK {
		return errAgentToken
	}
	if p.cookie && !safeMethod(r.Method) {
		if err := checkCSRF(r, p.tokenHash); err != nil {
			return err
		}
	}
	switch rt.access {
	case vaultRole:
		return p.require(r.PathValue("vault"), rt.role)
	case instance:
		return p.require("", rt.role)
	}
	return nil
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// csrfToken is derived from the session: SHA-256 over a label and the
// session token's hash. A page on another site can neither read the
// HttpOnly cookie nor this value, so it cannot forge the header.
func csrfToken(sessionHash [32]byte) string {
	h := sha256.New()
	h.Write([]byte("agent-vault csrf v1\x00"))
	h.Write(sessionHash[:])
	return hex.EncodeToString(h.Sum(nil))
}

func checkCSRF(r *http.Request, sessionHash [32]byte) error {
	got := r.Header.Get(api.CSRFHeader)
	want := csrfToken(sessionHash)
	if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		return errCSRF
	}
	return nil
}

// touchEvery bounds how often a session's last use is written.
const touchEvery = time.Minute

// authenticate finds the principal behind the request: a bearer session
// token, a bearer agent token (ava_...), or the session cookie.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (*principal, error) {
	tok, ok := bearerToken(r)
	cookie := false
	if !ok {
		if c, err := r.Cookie(api.SessionCookie); err == nil && c.Value != "" && len(c.Value) <= 256 {
			tok, ok, cookie = c.Value, true, true
		}
	}
	if !ok {
		if has, err := s.cfg.Store.HasOwner(); err == nil && !has {
			return nil, errorf(http.StatusUnauthorized, api.CodeSetupRequired,
				"no owner exists yet: run setup first")
		}
		return nil, errUnauthorized
	}
	h := TokenHash(tok)
	if !cookie && strings.HasPrefix(tok, agentTokenPrefix) {
		return s.authenticateAgent(h)
	}
	sess, err := s.cfg.Store.Session(h)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errUnauthorized
	} else if err != nil {
		return nil, err
	}
	now := s.now()
	if !now.Before(sess.ExpiresAt) {
		return nil, errUnauthorized
	}
	if now.Sub(sess.LastSeen) >= s.cfg.SessionIdle {
		if err := s.cfg.Store.DeleteSession(h); err != nil {
			s.log.Warn("admin cannot remove an idle session", "err", err)
		}
		return nil, errorf(http.StatusUnauthorized, api.CodeUnauthorized,
			"the session was idle for too long: log in again")
	}
	acct, err := s.cfg.Store.Account(sess.UserID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errUnauthorized
	} else if err != nil {
		return nil, err
	}
	if acct.Invited {
		return nil, errUnauthorized
	}
	if now.Sub(sess.LastSeen) >= touchEvery {
		if err := s.cfg.Store.TouchSession(h, now); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("admin cannot record session use", "err", err)
		}
	}
	return &principal{acct: acct, tokenHash: h, expires: sess.ExpiresAt, cookie: cookie}, nil
}

// authenticateAgent finds the active agent holding the token whose hash is
// h, comparing every agent's hash in constant time.
func (s *Server) authenticateAgent(h [32]byte) (*principal, error) {
	agents, err := s.cfg.Store.Agents("")
	if err != nil {
		return nil, err
	}
	var found *store.AgentRecord
	for i := range agents {
		if agents[i].TokenHash != ([32]byte{}) && subtle.ConstantTimeCompare(agents[i].TokenHash[:], h[:]) == 1 {
			found = &agents[i]
		}
	}
	if found == nil {
		return nil, errUnauthorized
	}
	if !found.Active(s.now()) {
		return nil, errorf(http.StatusUnauthorized, api.CodeUnauthorized, "this agent is revoked or expired")
	}
	return &principal{agent: found, tokenHash: h}, nil
}
