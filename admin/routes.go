package admin

import (
	"net/http"
	"strings"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/store"
)

// access is who may call a route. Roles are checked in one place,
// principal.allowed: here for vault routes and instance-wide routes, or,
// for routes whose vault comes from a resource (a proposal, an agent by
// name, an audit filter), by the handler through principal.require.
type access int

const (
	public    access = iota // no session
	anyHuman                // any logged-in user; the handler checks roles on resources
	vaultRole               // a user with at least route.role in the path's {vault}
	instance                // a user with at least route.role instance-wide
	agentOK                 // a user, or an agent token (the handler scopes agents to their own)
)

// handlerFunc serves one route; p is nil on public routes. Errors go through
// writeError.
type handlerFunc func(w http.ResponseWriter, r *http.Request, p *principal) error

type route struct {
	pattern string // Go 1.22 ServeMux pattern: "METHOD /path/{wildcard}"
	access  access
	role    store.Role // the least role, for vaultRole and instance
	h       handlerFunc
}

// Roles: the instance owner may do everything; admin (instance-wide or in a
// vault) changes a vault's contents; approver decides proposals and reads
// the audit log; viewer reads. A user's role in a vault is the higher of
// their instance-wide role and their role in that vault. Managing users is
// the owner's; creating and deleting vaults needs an instance-wide admin.
// Agent tokens reach only the routes marked agentOK.
const (
	roleRead   = store.RoleViewer
	roleDecide = store.RoleApprover
	roleManage = store.RoleAdmin
	roleAudit  = store.RoleApprover
	roleOwner  = store.RoleOwner
)

// table is every route of the API.
func (s *Server) table() []route {
	v := api.Prefix
	return []route{
		{"GET " + v + "/health", public, "", s.health},
		{"POST " + v + "/setup", public, "", s.setup},
		{"POST " + v + "/login", public, "", s.login},
		{"POST " + v + "/invites/accept", public, "", s.acceptInvite},
		{"POST " + v + "/logout", anyHuman, "", s.logout},
		{"DELETE " + v + "/logout", anyHuman, "", s.logout},
		{"GET " + v + "/session", agentOK, "", s.whoami},
		{"GET " + v + "/ca.pem", public, "", s.caPEM},

		{"GET " + v + "/vaults", anyHuman, "", s.listVaults},
		{"POST " + v + "/vaults", instance, roleManage, s.createVault},
		{"DELETE " + v + "/vaults/{vault}", instance, roleManage, s.deleteVault},

		{"GET " + v + "/vaults/{vault}/credentials", vaultRole, roleRead, s.listCredentials},
		{"PUT " + v + "/vaults/{vault}/credentials/{key}", vaultRole, roleManage, s.setCredential},
		{"DELETE " + v + "/vaults/{vault}/credentials/{key}", vaultRole, roleManage, s.deleteCredential},

		{"GET " + v + "/vaults/{vault}/services", vaultRole, roleRead, s.listServices},
		{"POST " + v + "/vaults/{vault}/services", vaultRole, roleManage, s.addService},
		{"DELETE " + v + "/vaults/{vault}/services/{name}", vaultRole, roleManage, s.deleteService},

		{"GET " + v + "/vaults/{vault}/agents", vaultRole, roleRead, s.listAgents},
		{"POST " + v + "/vaults/{vault}/agents", vaultRole, roleManage, s.createAgent},
		{"POST " + v + "/vaults/{vault}/agents/{name}/revoke", vaultRole, roleManage, s.revokeAgent},
		{"DELETE " + v + "/vaults/{vault}/agents/{name}", vaultRole, roleManage, s.deleteAgent},
		// Agent names are unique across vaults, so they are also addressable
		// without their vault (agent list, revoke, delete in the CLI).
		{"GET " + v + "/agents", anyHuman, "", s.listAgents},
		{"POST " + v + "/agents/{name}/revoke", anyHuman, "", s.revokeAgent},
		{"DELETE " + v + "/agents/{name}", anyHuman, "", s.deleteAgent},

		{"POST " + v + "/proposals", agentOK, "", s.createProposal},
		{"POST " + v + "/vaults/{vault}/proposals", agentOK, "", s.createProposal},
		{"GET " + v + "/proposals", agentOK, "", s.listProposals},
		{"GET " + v + "/vaults/{vault}/proposals", agentOK, "", s.listProposals},
		{"GET " + v + "/proposals/{id}", agentOK, "", s.showProposal},
		{"GET " + v + "/vaults/{vault}/proposals/{id}", agentOK, "", s.showProposal},
		{"POST " + v + "/proposals/{id}/approve", anyHuman, "", s.approveProposal},
		{"POST " + v + "/vaults/{vault}/proposals/{id}/approve", vaultRole, roleDecide, s.approveProposal},
		{"POST " + v + "/proposals/{id}/reject", anyHuman, "", s.rejectProposal},
		{"POST " + v + "/vaults/{vault}/proposals/{id}/reject", vaultRole, roleDecide, s.rejectProposal},

		{"GET " + v + "/users", instance, roleOwner, s.listUsers},
		{"POST " + v + "/users", instance, roleOwner, s.inviteUser},
		{"PUT " + v + "/users/{email}/role", instance, roleOwner, s.grantRole},
		{"DELETE " + v + "/users/{email}", instance, roleOwner, s.removeUser},

		{"GET " + v + "/audit", anyHuman, "", s.auditList},
		{"GET " + v + "/audit/export", anyHuman, "", s.auditExport},
		{"GET " + v + "/audit/stream", anyHuman, "", s.auditStream},
		{"GET " + v + "/audit/verify", anyHuman, "", s.auditVerify},

		// The web UI (ui.go, ui_pages.go). Its routes are public here
		// because s.ui authenticates them itself: only the session
		// cookie, a redirect to the login page instead of a JSON 401, the
		// CSRF token as a form field, roles checked as the API does.
		{"GET /{$}", public, "", s.uiRoot},
		{"GET /ui/static/{file}", public, "", s.uiStatic},
		{"GET /ui/login", public, "", s.uiLoginPage},
		{"POST /ui/login", public, "", s.uiLogin},
		{"POST /ui/logout", public, "", s.ui(s.uiLogout)},
		{"GET /ui/{$}", public, "", s.ui(s.uiVaults)},
		{"GET /ui/vaults/{vault}", public, "", s.ui(s.uiVault)},
		{"POST /ui/vaults/{vault}/credentials", public, "", s.ui(s.uiSetCredential)},
		{"POST /ui/vaults/{vault}/agents/{name}/revoke", public, "", s.ui(s.uiRevokeAgent)},
		{"GET /ui/proposals", public, "", s.ui(s.uiProposals)},
		{"POST /ui/proposals/{id}/approve", public, "", s.ui(s.uiApprove)},
		{"POST /ui/proposals/{id}/reject", public, "", s.ui(s.uiReject)},
		{"GET /ui/audit", public, "", s.ui(s.uiAudit)},
		{"/ui/", public, "", s.uiNotFound},
	}
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range s.table() {
		mux.Handle(rt.pattern, s.wrap(rt))
	}
	mux.Handle("/", s.wrap(route{access: public, h: func(w http.ResponseWriter, r *http.Request, _ *principal) error {
		return errorf(http.StatusNotFound, api.CodeNotFound, "no endpoint "+r.Method+" "+r.URL.Path)
	}}))
	return s.guard(mux)
}

// guard applies the checks every request passes before routing.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isUIPath(r.URL.Path) {
			uiHeaders(w.Header()) // every UI response, refusals below included
		}
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
			if rt.access == public {
				return nil
			}
			var err error
			if p, err = s.authenticate(w, r); err != nil {
				return err
			}
			return p.admit(r, rt)
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
			attrs = append(attrs, string(p.actor().Kind), p.actor().Name)
		}
		s.log.Info("admin request", attrs...)
	})
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
// for the audit stream).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
