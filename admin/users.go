package admin

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/store"
)

// Users are invited by an owner: the invite prints a one-time token (shown
// once, only its SHA-256 is stored, valid for Config.InviteTTL); the invitee
// accepts it with POST /invites/accept, choosing their password, and is
// logged in. The owner never learns the password.

const inviteTokenPrefix = "avi_"

func toAPIAccount(a store.Account) api.Account {
	return api.Account{Email: a.Email, Role: string(a.Role), VaultRoles: roleStrings(a.VaultRoles), Invited: a.Invited,
		InviteExpiresAt: a.InviteExpiresAt, InvitedBy: a.InvitedBy, CreatedAt: a.CreatedAt}
}

func parseRole(role, vault string) (store.Role, error) {
	r := store.Role(strings.ToLower(strings.TrimSpace(role)))
	if err := store.ValidRole(r, vault != ""); err != nil {
		return "", errorf(http.StatusBadRequest, api.CodeInvalid, strings.TrimPrefix(err.Error(), store.ErrInvalid.Error()+" "))
	}
	return r, nil
}

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request, _ *principal) error {
	as, err := s.cfg.Store.Accounts()
	if err != nil {
		return err
	}
	out := make([]api.Account, 0, len(as))
	for _, a := range as {
		out = append(out, toAPIAccount(a))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) inviteUser(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req api.UserInvite
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if err := validEmail(req.Email); err != nil {
		return err
	}
	if req.Vault != "" {
		if err := policy.ValidName("vault", req.Vault); err != nil {
			return err
		}
	}
	role, err := parseRole(req.Role, req.Vault)
	if err != nil {
		return err
	}
	tok, h, err := newToken(inviteTokenPrefix)
	if err != nil {
		return err
	}
	exp := s.now().Add(s.cfg.InviteTTL)
	acct, err := s.cfg.Store.InviteUser(p.actor(), req.Email, role, req.Vault, h, exp)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, api.Invitation{Account: toAPIAccount(acct), InviteToken: tok, ExpiresAt: acct.InviteExpiresAt})
	return nil
}

func (s *Server) grantRole(w http.ResponseWriter, r *http.Request, p *principal) error {
	email := r.PathValue("email")
	var req api.RoleGrant
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.Vault != "" {
		if err := policy.ValidName("vault", req.Vault); err != nil {
			return err
		}
	}
	var role store.Role
	if req.Role != "" && req.Role != "none" {
		var err error
		if role, err = parseRole(req.Role, req.Vault); err != nil {
			return err
		}
	}
	acct, err := s.cfg.Store.GrantRole(p.actor(), email, req.Vault, role)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toAPIAccount(acct))
	return nil
}

func (s *Server) removeUser(w http.ResponseWriter, r *http.Request, p *principal) error {
	return noContent(w, s.cfg.Store.RemoveUser(p.actor(), r.PathValue("email")))
}

var errBadInvite = errorf(http.StatusUnauthorized, api.CodeUnauthorized,
	"the invite token is unknown, already used or expired: ask an owner for a new invite")

// acceptInvite sets the invitee's password and logs them in. Failures count
// against the client address like failed logins.
func (s *Server) acceptInvite(w http.ResponseWriter, r *http.Request, _ *principal) error {
	var req api.InviteAccept
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	keys := []string{"ip:" + clientIP(r)}
	if wait := s.limiter.blocked(keys...); wait > 0 {
		secs := int(wait.Seconds() + 0.999)
		return &apiError{status: http.StatusTooManyRequests, code: api.CodeRateLimited, retryAfter: secs,
			msg: "too many failed attempts: wait " + strconv.Itoa(secs) + " s and try again"}
	}
	if !strings.HasPrefix(req.Token, inviteTokenPrefix) || len(req.Token) > 256 {
		s.limiter.fail(keys...)
		return errBadInvite
	}
	if err := validPassword(req.Password); err != nil {
		return err
	}
	var hash string
	err := s.withHashSlot(r.Context(), func() (err error) {
		hash, err = hashPassword(req.Password, s.cfg.Password)
		return err
	})
	if err != nil {
		return err
	}
	u, err := s.cfg.Store.AcceptInvite(TokenHash(req.Token), hash)
	if errors.Is(err, store.ErrNotFound) {
		s.limiter.fail(keys...)
		s.log.Warn("admin invite not accepted", "client", clientIP(r))
		return errBadInvite
	} else if err != nil {
		return fmt.Errorf("accept invite: %w", err)
	}
	s.limiter.success(keys...)
	tok, err := s.startSession(u)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, tok)
	return nil
}
