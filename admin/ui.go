package admin

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"html/template"
	"mime"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/store"
)

// The web UI: server-rendered pages (html/template, so every value is
// escaped for its context) with a stylesheet and a little plain JavaScript,
// all embedded. Pages read through the same store methods and role checks
// as the API handlers; forms post to UI routes that take the cookie session
// and a CSRF field derived from it (the value the API takes in
// X-CSRF-Token). Nothing here ever reads a credential value back, and no
// token goes into a URL.

//go:embed ui/templates/*.html ui/static/ui.css ui/static/ui.js ui/static/favicon.svg
var uiFS embed.FS

// uiCSP allows only same-origin scripts, styles and form targets: no inline
// script or style, no framing.
const uiCSP = "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"

// loginFormCookie holds the login form's double-submit token, so a foreign
// page cannot log a browser into an account of its choosing.
const loginFormCookie = "av_login_form"

var uiFuncs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05Z")
	},
	"join": func(s []string) string { return strings.Join(s, ", ") },
	"prefixes": func(ps []netip.Prefix) string {
		out := make([]string, len(ps))
		for i, p := range ps {
			out[i] = p.String()
		}
		return strings.Join(out, ", ")
	},
	"locations": func(ls []policy.Location) string {
		out := make([]string, len(ls))
		for i, l := range ls {
			out[i] = string(l)
		}
		return strings.Join(out, ", ")
	},
}

// uiPages holds each page parsed together with the base layout.
var uiPages = func() map[string]*template.Template {
	out := map[string]*template.Template{}
	for _, n := range []string{"login", "vaults", "vault", "proposals", "audit", "error"} {
		out[n] = template.Must(template.New(n).Funcs(uiFuncs).ParseFS(uiFS,
			"ui/templates/base.html", "ui/templates/"+n+".html"))
	}
	return out
}()

// uiPage is what the base layout shows around a page's Data.
type uiPage struct {
	Title    string
	Nav      string
	User     string
	Role     string
	CSRF     string
	CanAudit bool
	Pending  int
	Flash    string
	Error    string
	Insecure bool
	Data     any
}

// isUIPath reports whether a path belongs to the UI (everything outside the
// API).
func isUIPath(p string) bool { return p == "/" || p == "/ui" || strings.HasPrefix(p, "/ui/") }

// uiHeaders sets the security headers of every UI response.
func uiHeaders(h http.Header) {
	h.Set("Content-Security-Policy", uiCSP)
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
}

func (s *Server) render(w http.ResponseWriter, status int, name string, pg *uiPage) {
	pg.Insecure = s.cfg.Store.Insecure()
	var buf bytes.Buffer
	if err := uiPages[name].ExecuteTemplate(&buf, "base", pg); err != nil {
		s.log.Error("admin ui cannot render a page", "page", name, "err", err)
		http.Error(w, "internal error; see the server log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// uiError renders err as a page with its status; unexpected errors are
// logged and shown without detail.
func (s *Server) uiError(w http.ResponseWriter, r *http.Request, pg *uiPage, err error) {
	ae := s.toAPIError(r, err)
	if ae.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(ae.retryAfter))
	}
	pg.Title, pg.Error, pg.Data = http.StatusText(ae.status), ae.msg, nil
	s.render(w, ae.status, "error", pg)
}

// uiHandler serves one UI route for a logged-in human. pg arrives filled
// with the layout's fields.
type uiHandler func(w http.ResponseWriter, r *http.Request, p *principal, pg *uiPage) error

// ui adapts a uiHandler to the route table. It takes only the session
// cookie (no bearer or agent token), sends a browser without a session to
// the login page, checks the CSRF field of every POST, and renders errors
// as HTML.
func (s *Server) ui(h uiHandler) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, _ *principal) error {
		p, err := s.uiSession(w, r)
		if err != nil {
			var ae *apiError
			if errors.As(err, &ae) && ae.status == http.StatusUnauthorized {
				http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
				return nil
			}
			s.uiError(w, r, &uiPage{}, err)
			return nil
		}
		pg := s.newPage(p)
		if r.Method == http.MethodPost {
			if err := uiForm(w, r, p); err != nil {
				s.uiError(w, r, pg, err)
				return nil
			}
		}
		if err := h(w, r, p, pg); err != nil {
			s.uiError(w, r, pg, err)
		}
		return nil
	}
}

var errUISession = errorf(http.StatusUnauthorized, api.CodeUnauthorized, "log in first")

// uiSession authenticates the session cookie; the UI accepts nothing else.
func (s *Server) uiSession(w http.ResponseWriter, r *http.Request) (*principal, error) {
	if c, err := r.Cookie(api.SessionCookie); err != nil || c.Value == "" {
		return nil, errUISession
	}
	p, err := s.authenticate(w, r)
	if err != nil {
		return nil, err
	}
	if !p.cookie || p.isAgent() {
		return nil, errUISession
	}
	return p, nil
}

var errUICSRF = errorf(http.StatusForbidden, api.CodeCSRF,
	"the form's CSRF token is missing or wrong: reload the page and try again")

// uiForm reads a posted form (URL-encoded, at most MaxBodyBytes) and checks
// its csrf field against the session's token.
func uiForm(w http.ResponseWriter, r *http.Request, p *principal) error {
	if err := parseUIForm(w, r); err != nil {
		return err
	}
	got, want := r.PostForm.Get("csrf"), csrfToken(p.tokenHash)
	if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		return errUICSRF
	}
	return nil
}

func parseUIForm(w http.ResponseWriter, r *http.Request) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return errorf(http.StatusUnsupportedMediaType, api.CodeUnsupportedType, "send the form URL-encoded")
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	if err := r.ParseForm(); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return err
		}
		return errorf(http.StatusBadRequest, api.CodeBadRequest, "the form cannot be read")
	}
	return nil
}

// newPage fills the layout's fields for p.
func (s *Server) newPage(p *principal) *uiPage {
	pg := &uiPage{User: p.acct.Email, Role: string(p.acct.Role), CSRF: csrfToken(p.tokenHash),
		CanAudit: p.anyVault(roleAudit)}
	if pg.Role == "" {
		pg.Role = "per-vault roles"
	}
	if ps, err := s.cfg.Store.ListProposals(store.ProposalQuery{State: store.ProposalPending}); err == nil {
		for _, pr := range ps {
			if p.allowed(pr.Vault, roleDecide) {
				pg.Pending++
			}
		}
	}
	return pg
}

// flash maps the done= parameter of a redirect after a form to its message
// (fixed strings only: nothing from the URL is echoed).
var flashes = map[string]string{
	"approved":   "Proposal approved: the service is active.",
	"rejected":   "Proposal rejected.",
	"revoked":    "Agent revoked: its token no longer works and its connections are closed.",
	"credential": "Credential value saved.",
	"logout":     "You are logged out.",
}

func flash(r *http.Request) string { return flashes[r.URL.Query().Get("done")] }

// seeOther answers a successful form post with a redirect to a page (the
// post/redirect/get pattern, so a reload does not post again).
func seeOther(w http.ResponseWriter, r *http.Request, to, done string) {
	if done != "" {
		to += "?done=" + url.QueryEscape(done)
	}
	http.Redirect(w, r, to, http.StatusSeeOther)
}

func (s *Server) uiRoot(w http.ResponseWriter, r *http.Request, _ *principal) error {
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
	return nil
}

func (s *Server) uiNotFound(w http.ResponseWriter, r *http.Request, _ *principal) error {
	s.render(w, http.StatusNotFound, "error", &uiPage{Title: "Not found", Error: "There is no page " + r.URL.Path + "."})
	return nil
}

var uiStaticTypes = map[string]string{
	"ui.css":      "text/css; charset=utf-8",
	"ui.js":       "text/javascript; charset=utf-8",
	"favicon.svg": "image/svg+xml",
}

func (s *Server) uiStatic(w http.ResponseWriter, r *http.Request, p *principal) error {
	name := r.PathValue("file")
	ct, ok := uiStaticTypes[name]
	if !ok {
		return s.uiNotFound(w, r, p)
	}
	b, err := uiFS.ReadFile(path.Join("ui/static", name))
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", ct)
	_, _ = w.Write(b)
	return nil
}

// loginData is the login page's Data.
type loginData struct {
	NoOwner   bool
	Email     string
	FormToken string
}

// uiLoginPage shows the login form with a fresh double-submit token.
func (s *Server) uiLoginPage(w http.ResponseWriter, r *http.Request, _ *principal) error {
	pg := &uiPage{Title: "Log in", Flash: flash(r)}
	return s.renderLogin(w, r, http.StatusOK, pg, "")
}

func (s *Server) renderLogin(w http.ResponseWriter, r *http.Request, status int, pg *uiPage, email string) error {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return err
	}
	tok := hex.EncodeToString(b[:])
	http.SetCookie(w, &http.Cookie{Name: loginFormCookie, Value: tok, Path: "/ui/login", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: 3600})
	has, err := s.cfg.Store.HasOwner()
	if err != nil {
		return err
	}
	pg.Data = loginData{NoOwner: !has, Email: email, FormToken: tok}
	s.render(w, status, "login", pg)
	return nil
}

// uiLogin takes the login form: the same authentication as the API's login
// (rate limit, Argon2id check, audit row, session), answered with the
// session cookie and a redirect.
func (s *Server) uiLogin(w http.ResponseWriter, r *http.Request, _ *principal) error {
	pg := &uiPage{Title: "Log in"}
	if err := parseUIForm(w, r); err != nil {
		pg.Error = mapError(err).msg
		return s.renderLogin(w, r, mapError(err).status, pg, "")
	}
	email := r.PostForm.Get("email")
	c, err := r.Cookie(loginFormCookie)
	got := r.PostForm.Get("form_token")
	if err != nil || got == "" || subtle.ConstantTimeCompare([]byte(c.Value), []byte(got)) != 1 {
		pg.Error = "The login form expired: try again."
		return s.renderLogin(w, r, http.StatusForbidden, pg, email)
	}
	tok, err := s.checkLogin(r, api.LoginRequest{Email: email, Password: r.PostForm.Get("password")})
	if err != nil {
		ae := s.toAPIError(r, err)
		if ae.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(ae.retryAfter))
		}
		pg.Error = ae.msg
		return s.renderLogin(w, r, ae.status, pg, email)
	}
	sessionCookie(w, r, tok)
	http.SetCookie(w, &http.Cookie{Name: loginFormCookie, Value: "", Path: "/ui/login", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	seeOther(w, r, "/ui/", "")
	return nil
}

// uiLogout ends the session the way the API's logout does and clears the
// cookie.
func (s *Server) uiLogout(w http.ResponseWriter, r *http.Request, p *principal, _ *uiPage) error {
	if err := s.endSession(w, r, p); err != nil {
		return err
	}
	seeOther(w, r, "/ui/login", "logout")
	return nil
}
