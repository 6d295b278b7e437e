package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/mail"
	"strconv"
	"strings"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/store"
)

func (s *Server) health(w http.ResponseWriter, r *http.Request, _ *principal) error {
	h := api.Health{Status: "ok", Version: s.cfg.Version, Insecure: s.cfg.Store.Insecure()}
	has, err := s.cfg.Store.HasOwner()
	if err == nil && s.cfg.Ready != nil {
		err = s.cfg.Ready()
	}
	h.SetupDone = has
	if s.cfg.Describe != nil {
		s.cfg.Describe(&h)
	}
	if err != nil {
		s.log.Warn("admin health check failed", "err", err)
		h.Status, h.Message = "unavailable", err.Error()
		writeJSON(w, http.StatusServiceUnavailable, h)
		return nil
	}
	writeJSON(w, http.StatusOK, h)
	return nil
}

// validEmail accepts a plain address (no display name), at most 254 bytes.
func validEmail(email string) error {
	if len(email) > 254 {
		return errorf(http.StatusBadRequest, api.CodeInvalid, "invalid email: longer than 254 characters")
	}
	a, err := mail.ParseAddress(email)
	if err != nil || a.Address != email || a.Name != "" {
		return errorf(http.StatusBadRequest, api.CodeInvalid, "invalid email: use a plain address like you@example.com")
	}
	return nil
}

func validPassword(pw string) error {
	if len(pw) < MinPasswordLength {
		return errorf(http.StatusBadRequest, api.CodeInvalid,
			fmt.Sprintf("invalid password: use at least %d characters", MinPasswordLength))
	}
	if len(pw) > maxPasswordLength {
		return errorf(http.StatusBadRequest, api.CodeInvalid,
			fmt.Sprintf("invalid password: use at most %d characters", maxPasswordLength))
	}
	return nil
}

// withHashSlot runs fn holding one of the few slots for Argon2id work, so a
// burst of logins cannot exhaust memory.
func (s *Server) withHashSlot(ctx context.Context, fn func() error) error {
	select {
	case s.hashSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.hashSem }()
	return fn()
}

func (s *Server) setup(w http.ResponseWriter, r *http.Request, _ *principal) error {
	var req api.LoginRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if err := validEmail(req.Email); err != nil {
		return err
	}
	if err := validPassword(req.Password); err != nil {
		return err
	}
	if has, err := s.cfg.Store.HasOwner(); err != nil {
		return err
	} else if has {
		return store.ErrSetupDone
	}
	var hash string
	err := s.withHashSlot(r.Context(), func() (err error) {
		hash, err = hashPassword(req.Password, s.cfg.Password)
		return err
	})
	if err != nil {
		return err
	}
	u, err := s.cfg.Store.Setup(req.Email, hash)
	if err != nil {
		return err
	}
	s.log.Info("admin setup done: owner created", "user", u.Email)
	tok, err := s.startSession(u)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, tok)
	return nil
}

func (s *Server) login(w http.ResponseWriter, r *http.Request, _ *principal) error {
	var req api.LoginRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	tok, err := s.checkLogin(r, req)
	if err != nil {
		return err
	}
	if r.URL.Query().Get("cookie") != "" {
		s.setSessionCookie(w, r, tok)
		return nil
	}
	writeJSON(w, http.StatusOK, tok)
	return nil
}

// checkLogin checks an email and password (rate limit, Argon2id with the
// same work for unknown emails, an audit row either way) and starts a
// session. The API's login and the UI's login form both come here.
func (s *Server) checkLogin(r *http.Request, req api.LoginRequest) (api.SessionToken, error) {
	if req.Email == "" || req.Password == "" {
		return api.SessionToken{}, errorf(http.StatusBadRequest, api.CodeInvalid, "send both email and password")
	}
	if len(req.Email) > 254 || len(req.Password) > maxPasswordLength {
		return api.SessionToken{}, errBadCredentials
	}
	keys := []string{"email:" + strings.ToLower(req.Email), "ip:" + clientIP(r)}
	u, err := s.cfg.Store.UserByEmail(req.Email)
	known := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return api.SessionToken{}, err
	}
	// who names the attempt in logs and audit rows: a user's own email, never
	// what was typed, since a password pasted into the email field (one with
	// an @ passes as an address) must not end up in either
	who := "(unknown email)"
	if known {
		who = u.Email
	}
	if wait := s.limiter.blocked(keys...); wait > 0 {
		secs := int(wait.Seconds() + 0.999)
		s.log.Warn("admin login throttled", "user", who, "client", clientIP(r), "retry_after_s", secs)
		return api.SessionToken{}, &apiError{status: http.StatusTooManyRequests, code: api.CodeRateLimited, retryAfter: secs,
			msg: "too many failed logins: wait " + strconv.Itoa(secs) + " s and try again"}
	}
	if known && u.PasswordHash == "" {
		known = false // invited, not accepted yet: no password to log in with
	}
	hash := s.dummy // same work for unknown emails, so timing does not tell
	if known {
		hash = u.PasswordHash
	}
	var ok bool
	err = s.withHashSlot(r.Context(), func() (err error) {
		ok, err = verifyPassword(req.Password, hash)
		return err
	})
	if err != nil {
		return api.SessionToken{}, fmt.Errorf("verify password: %w", err)
	}
	if !ok || !known {
		s.limiter.fail(keys...)
		s.auditLogin(r.Context(), who, audit.DecisionDeny, "wrong_email_or_password")
		s.log.Warn("admin login failed", "user", who, "client", clientIP(r))
		return api.SessionToken{}, errBadCredentials
	}
	s.limiter.success(keys...)
	if err := s.auditLogin(r.Context(), u.Email, audit.DecisionAllow, ""); err != nil {
		return api.SessionToken{}, err
	}
	return s.startSession(u)
}

// setSessionCookie answers a cookie login: the session token goes only into
// an HttpOnly, SameSite=Strict cookie; the body carries the CSRF token that
// state-changing requests must send in X-CSRF-Token.
func (s *Server) setSessionCookie(w http.ResponseWriter, r *http.Request, tok api.SessionToken) {
	sessionCookie(w, r, tok)
	writeJSON(w, http.StatusOK, api.CookieLogin{Email: tok.Email, Role: tok.Role,
		CSRFToken: csrfToken(TokenHash(tok.Token)), ExpiresAt: tok.ExpiresAt})
}

// sessionCookie sets the HttpOnly, SameSite=Strict session cookie.
func sessionCookie(w http.ResponseWriter, r *http.Request, tok api.SessionToken) {
	http.SetCookie(w, &http.Cookie{Name: api.SessionCookie, Value: tok.Token, Path: "/", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, Expires: tok.ExpiresAt})
}

// auditLogin records a login attempt. A failed write of a successful login
// fails the login (fail closed); of a failed one it is only logged.
func (s *Server) auditLogin(ctx context.Context, email, decision, reason string) error {
	ev := &audit.Event{
		Time:     s.now(),
		Actor:    audit.Actor{Kind: audit.ActorUser, Name: email},
		Action:   "user.login",
		Decision: decision,
		Reason:   reason,
	}
	if err := s.cfg.Store.Append(ctx, ev); err != nil {
		s.log.Error("admin cannot audit a login", "user", email, "decision", decision, "err", err)
		if decision == audit.DecisionAllow {
			return errorf(http.StatusServiceUnavailable, api.CodeUnavailable, "the audit log cannot be written; try again later")
		}
	}
	return nil
}

func (s *Server) startSession(u store.User) (api.SessionToken, error) {
	tok, h, err := newToken(sessionTokenPrefix)
	if err != nil {
		return api.SessionToken{}, err
	}
	now := s.now()
	sess := store.Session{TokenHash: h, UserID: u.ID, CreatedAt: now, ExpiresAt: now.Add(s.cfg.SessionTTL), LastSeen: now}
	if err := s.cfg.Store.CreateSession(sess); err != nil {
		return api.SessionToken{}, fmt.Errorf("create session: %w", err)
	}
	// expired sessions are refused on use; drop them now and then
	if n, err := s.cfg.Store.DeleteExpiredSessions(); err != nil {
		s.log.Warn("admin cannot remove expired sessions", "err", err)
	} else if n > 0 {
		s.log.Info("admin removed expired sessions", "count", n)
	}
	return api.SessionToken{Token: tok, Email: u.Email, Role: string(u.Role), ExpiresAt: sess.ExpiresAt}, nil
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, p *principal) error {
	if err := s.endSession(w, r, p); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// endSession deletes the session, audits the logout and clears a session
// cookie (the API's logout and the UI's logout form).
func (s *Server) endSession(w http.ResponseWriter, r *http.Request, p *principal) error {
	if err := s.cfg.Store.DeleteSession(p.tokenHash); err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if err := s.cfg.Store.Append(r.Context(), &audit.Event{Time: s.now(), Actor: p.actor(), Action: "user.logout"}); err != nil {
		s.log.Warn("admin cannot audit a logout", "user", p.acct.Email, "err", err)
	}
	if p.cookie {
		http.SetCookie(w, &http.Cookie{Name: api.SessionCookie, Value: "", Path: "/", HttpOnly: true,
			Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	}
	return nil
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request, p *principal) error {
	if p.isAgent() {
		writeJSON(w, http.StatusOK, api.Whoami{Kind: "agent", Agent: p.agent.Name, Vault: p.agent.Vault, ExpiresAt: p.agent.ExpiresAt})
		return nil
	}
	writeJSON(w, http.StatusOK, api.Whoami{Kind: "user", Email: p.acct.Email, Role: string(p.acct.Role),
		VaultRoles: roleStrings(p.acct.VaultRoles), ExpiresAt: p.expires})
	return nil
}

func roleStrings(m map[string]store.Role) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = string(v)
	}
	return out
}

func (s *Server) caPEM(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if s.cfg.CACert == nil {
		return errorf(http.StatusNotFound, api.CodeCAUnavailable,
			"this server has no CA yet (the data path is not running); try again once it is")
	}
	pem, err := s.cfg.CACert()
	if err != nil {
		return fmt.Errorf("read CA certificate: %w", err)
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(pem)
	return nil
}

// clientIP is the peer address; no forwarding header is trusted.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
