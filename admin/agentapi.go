package admin

import (
	"fmt"
	"log/slog"
	"net/http"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/store"
)

// AgentStore is what the agent-facing endpoints need of the store;
// *store.Store satisfies it.
type AgentStore interface {
	Services(vault string) ([]policy.Service, error)
	CreateProposal(actor audit.Actor, p store.Proposal) (store.Proposal, error)
	ListProposals(q store.ProposalQuery) ([]store.Proposal, error)
	GetProposal(id uint64) (store.Proposal, error)
}

// NewAgentAPI returns the control plane's part of the reserved name
// agent-vault.internal, for the data path to serve to agents (cmd passes it
// as the broker's internal handler):
//
//	GET  /v1/services        the agent's vault's services: names and hosts, never values
//	GET  /v1/proposals       the agent's own proposals
//	POST /v1/proposals       propose a service (body: api.ProposalCreate)
//	GET  /v1/proposals/{id}  one of the agent's own proposals
//
// agentOf returns the agent the data path identified by its network
// identity or proxy token (e.g. mitm.AgentFromContext(r.Context())); a
// request without one is refused. Nothing in a request body names the
// agent. Errors are {"error": {"code", "message", "hint"}} with the header
// X-Agent-Vault-Error.
func NewAgentAPI(st AgentStore, agentOf func(*http.Request) (policy.Agent, bool), log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	h := &agentAPI{st: st, agentOf: agentOf, log: log}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/services", h.wrap(h.services))
	mux.HandleFunc("GET /v1/proposals", h.wrap(h.list))
	mux.HandleFunc("POST /v1/proposals", h.wrap(h.create))
	mux.HandleFunc("GET /v1/proposals/{id}", h.wrap(h.show))
	mux.HandleFunc("/", h.wrap(func(w http.ResponseWriter, r *http.Request, _ policy.Agent) error {
		return errorf(http.StatusNotFound, api.CodeNotFound, "agent-vault.internal has no "+r.Method+" "+r.URL.Path)
	}))
	return mux
}

type agentAPI struct {
	st      AgentStore
	agentOf func(*http.Request) (policy.Agent, bool)
	log     *slog.Logger
}

const agentHint = "GET /v1/services lists what you may reach; POST /v1/proposals {name, host, auth{kind, credential}, reason} asks a human for more."

func (h *agentAPI) wrap(fn func(http.ResponseWriter, *http.Request, policy.Agent) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a, ok := h.agentOf(r)
		var err error
		if !ok || a.Name == "" {
			err = errorf(http.StatusForbidden, "agent_unknown", "this request does not come from a known agent")
		} else {
			err = fn(w, r, a)
		}
		if err == nil {
			return
		}
		ae := agentAPIError(err)
		if ae.status == http.StatusInternalServerError {
			h.log.Error("agent API request failed", "agent", a.Name, "method", r.Method, "path", r.URL.Path, "err", err)
		}
		w.Header().Set("X-Agent-Vault-Error", ae.code)
		writeJSON(w, ae.status, api.AgentError{Error: api.AgentErrorDetail{Code: ae.code, Message: ae.msg, Hint: agentHint}})
	}
}

// agentAPIError maps errors like the admin API does.
func agentAPIError(err error) *apiError {
	if ae := mapError(err); ae != nil {
		return ae
	}
	return errInternal
}

func (h *agentAPI) services(w http.ResponseWriter, r *http.Request, a policy.Agent) error {
	svcs, err := h.st.Services(a.Vault)
	if err != nil {
		return err
	}
	out := make([]api.ServiceSummary, 0, len(svcs))
	for _, s := range svcs {
		out = append(out, api.ServiceSummary{Name: s.Name, Host: s.Host, Port: s.Port, Path: s.Path, Methods: s.Methods, Auth: string(s.Auth.Kind)})
	}
	writeJSON(w, http.StatusOK, map[string]any{"vault": a.Vault, "services": out})
	return nil
}

func (h *agentAPI) list(w http.ResponseWriter, r *http.Request, a policy.Agent) error {
	ps, err := h.st.ListProposals(store.ProposalQuery{Vault: a.Vault, Agent: a.Name})
	if err != nil {
		return err
	}
	out := make([]api.Proposal, 0, len(ps))
	for _, p := range ps {
		out = append(out, toAPIProposal(p))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (h *agentAPI) create(w http.ResponseWriter, r *http.Request, a policy.Agent) error {
	var req api.ProposalCreate
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	actor := audit.Actor{Kind: audit.ActorAgent, Name: a.Name}
	p, err := createAgentProposal(h.st, actor, "", req)
	if err != nil {
		return err
	}
	h.log.Info("agent proposed a service", "agent", a.Name, "vault", p.Vault, "proposal", p.ID, "service", p.Service.Name, "host", p.Service.Host)
	writeJSON(w, http.StatusCreated, toAPIProposal(p))
	return nil
}

func (h *agentAPI) show(w http.ResponseWriter, r *http.Request, a policy.Agent) error {
	id, err := proposalID(r)
	if err != nil {
		return err
	}
	p, err := h.st.GetProposal(id)
	if err != nil {
		return err
	}
	if p.Agent != a.Name {
		return fmt.Errorf("proposal %d: %w", id, store.ErrNotFound)
	}
	writeJSON(w, http.StatusOK, toAPIProposal(p))
	return nil
}
