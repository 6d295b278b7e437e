package admin

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/store"
)

// perm is what a route needs of the caller.
type perm int

const (
	permPublic  perm = iota // no session needed
	permSession             // any logged-in user (logout, whoami)
	permRead                // list vaults, credentials (names), services, agents
	permManage              // change vaults, credentials, services, agents
	permAudit               // read and verify the audit log
)

// authorize is the one place roles meet permissions. Until the role model
// lands, the owner may do everything and every other role may only read.
func authorize(role store.Role, p perm) bool {
	switch p {
	case permPublic, permSession:
		return true
	case permRead:
		return role != ""
	}
	return role == store.RoleOwner
}

// principal is the logged-in user behind a request.
type principal struct {
	user      store.User
	tokenHash [32]byte
}

func (p *principal) actor() audit.Actor {
	return audit.Actor{Kind: audit.ActorUser, Name: p.user.Email}
}

// handlerFunc serves one route; p is nil on public routes. Errors go through
// writeError.
type handlerFunc func(w http.ResponseWriter, r *http.Request, p *principal) error

type route struct {
	pattern string // Go 1.22 ServeMux pattern: "METHOD /path/{wildcard}"
	perm    perm
	h       handlerFunc
}

// table is every route of the API.
func (s *Server) table() []route {
	v := api.Prefix
	return []route{
		{"GET " + v + "/health", permPublic, s.health},
		{"POST " + v + "/setup", permPublic, s.setup},
		{"POST " + v + "/login", permPublic, s.login},
		{"POST " + v + "/logout", permSession, s.logout},
		{"DELETE " + v + "/logout", permSession, s.logout},
		{"GET " + v + "/session", permSession, s.whoami},
		{"GET " + v + "/ca.pem", permPublic, s.caPEM},

		{"GET " + v + "/vaults", permRead, s.listVaults},
		{"POST " + v + "/vaults", permManage, s.createVault},
		{"DELETE " + v + "/vaults/{vault}", permManage, s.deleteVault},

		{"GET " + v + "/vaults/{vault}/credentials", permRead, s.listCredentials},
		{"PUT " + v + "/vaults/{vault}/credentials/{key}", permManage, s.setCredential},
		{"DELETE " + v + "/vaults/{vault}/credentials/{key}", permManage, s.deleteCredential},

		{"GET " + v + "/vaults/{vault}/services", permRead, s.listServices},
		{"POST " + v + "/vaults/{vault}/services", permManage, s.addService},
		{"DELETE " + v + "/vaults/{vault}/services/{name}", permManage, s.deleteService},

		{"GET " + v + "/vaults/{vault}/agents", permRead, s.listAgents},
		{"POST " + v + "/vaults/{vault}/agents", permManage, s.createAgent},
		{"POST " + v + "/vaults/{vault}/agents/{name}/revoke", permManage, s.revokeAgent},
		{"DELETE " + v + "/vaults/{vault}/agents/{name}", permManage, s.deleteAgent},
		// Agent names are unique across vaults, so they are also addressable
		// without their vault (agent list, revoke, delete in the CLI).
		{"GET " + v + "/agents", permRead, s.listAgents},
		{"POST " + v + "/agents/{name}/revoke", permManage, s.revokeAgent},
		{"DELETE " + v + "/agents/{name}", permManage, s.deleteAgent},

		{"GET " + v + "/audit", permAudit, s.auditList},
		{"GET " + v + "/audit/verify", permAudit, s.auditVerify},
	}
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range s.table() {
		mux.Handle(rt.pattern, s.wrap(rt))
	}
	mux.Handle("/", s.wrap(route{perm: permPublic, h: func(w http.ResponseWriter, r *http.Request, _ *principal) error {
		return errorf(http.StatusNotFound, api.CodeNotFound, "no endpoint "+r.Method+" "+r.URL.Path)
	}}))
	return s.guard(mux)
}

// guard applies the checks every request passes before routing.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.checkHost(r); err != nil {
			s.writeError(w, r, err)
			return
		}
		if err := checkOrigin(r); err != nil {
			s.writeError(w, r, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// wrap authenticates and authorizes, runs the handler, maps its error and
// logs one line per request.
func (s *Server) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := s.now()
		sw := &statusWriter{ResponseWriter: w}
		var p *principal
		err := func() error {
			if rt.perm == permPublic {
				return nil
			}
			var err error
			if p, err = s.authenticate(r); err != nil {
				return err
			}
			if !authorize(p.user.Role, rt.perm) {
				return errForbidden
			}
			return nil
		}()
		if err == nil {
			err = rt.h(sw, r, p)
		}
		if err != nil {
			s.writeError(sw, r, err)
		}
		attrs := []any{"method", r.Method, "path", r.URL.Path, "status", sw.code(),
			"duration", s.now().Sub(start).Round(time.Microsecond)}
		if p != nil {
			attrs = append(attrs, "user", p.user.Email)
		}
		s.log.Info("admin request", attrs...)
	})
}

// authenticate finds the session behind the request's bearer token.
func (s *Server) authenticate(r *http.Request) (*principal, error) {
	tok, ok := bearerToken(r)
	if !ok {
		if has, err := s.cfg.Store.HasOwner(); err == nil && !has {
			return nil, errorf(http.StatusUnauthorized, api.CodeSetupRequired,
				"no owner exists yet: run setup first")
		}
		return nil, errUnauthorized
	}
	h := TokenHash(tok)
	sess, err := s.cfg.Store.Session(h)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errUnauthorized
	} else if err != nil {
		return nil, err
	}
	if !s.now().Before(sess.ExpiresAt) {
		return nil, errUnauthorized
	}
	u, err := s.cfg.Store.UserByID(sess.UserID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errUnauthorized
	} else if err != nil {
		return nil, err
	}
	return &principal{user: u, tokenHash: h}, nil
}

func bearerToken(r *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != "" && len(tok) <= 256
}

// statusWriter remembers the status code for the request log line.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) code() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// Unwrap lets http.ResponseController reach the underlying writer (flushing
// for the audit stream later).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
