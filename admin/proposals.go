package admin

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/store"
)

// The proposal workflow on the admin API. Agents (by token) create
// proposals and list their own; humans with the approver role in the
// proposal's vault approve or reject, sending back the content hash of the
// proposal they saw.

func toAPIProposal(p store.Proposal) api.Proposal {
	return api.Proposal{ID: p.ID, Vault: p.Vault, Agent: p.Agent, Service: p.Service, Reason: p.Reason,
		State: string(p.State), Revision: p.Revision, Hash: p.Hash, CreatedAt: p.CreatedAt, UpdatedAt: p.UpdatedAt,
		ExpiresAt: p.ExpiresAt, DecidedAt: p.DecidedAt, DecidedBy: p.DecidedBy, Note: p.Note, Credential: p.Credential}
}

func proposalID(r *http.Request) (uint64, error) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		return 0, errorf(http.StatusBadRequest, api.CodeInvalid, "invalid proposal id: use the number proposal list shows")
	}
	return id, nil
}

// pathVault returns the {vault} of the path, "" when the route has none.
func pathVault(r *http.Request) (string, error) {
	if r.PathValue("vault") == "" {
		return "", nil
	}
	return pathName(r, "vault", "vault")
}

var errHumanPropose = errorf(http.StatusForbidden, api.CodeForbidden,
	"proposals are made by agents (with their token); as a human, add the service directly with service add")

func (s *Server) createProposal(w http.ResponseWriter, r *http.Request, p *principal) error {
	if !p.isAgent() {
		return errHumanPropose
	}
	vault, err := pathVault(r)
	if err != nil {
		return err
	}
	var req api.ProposalCreate
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	out, err := createAgentProposal(s.cfg.Store, p.actor(), vault, req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, toAPIProposal(out))
	return nil
}

// proposalCreator is what creating a proposal needs of the store.
type proposalCreator interface {
	CreateProposal(actor audit.Actor, p store.Proposal) (store.Proposal, error)
}

// createAgentProposal checks a proposal body and records it for the agent
// (shared by the admin API and the agent-facing handler).
func createAgentProposal(st proposalCreator, actor audit.Actor, pathVault string, req api.ProposalCreate) (store.Proposal, error) {
	vault := req.Vault
	if pathVault != "" {
		if vault != "" && vault != pathVault {
			return store.Proposal{}, errorf(http.StatusBadRequest, api.CodeInvalid,
				fmt.Sprintf("invalid vault: the body names %q but the path %q", vault, pathVault))
		}
		vault = pathVault
	}
	svc := req.Service
	svc.Vault = vault
	if vault != "" {
		if err := policy.ValidName("vault", vault); err != nil {
			return store.Proposal{}, err
		}
	}
	if strings.TrimSpace(req.Reason) == "" {
		return store.Proposal{}, errorf(http.StatusBadRequest, api.CodeInvalid, "invalid reason: say why the agent needs this service")
	}
	return st.CreateProposal(actor, store.Proposal{Vault: vault, Service: svc, Reason: req.Reason})
}

func (s *Server) listProposals(w http.ResponseWriter, r *http.Request, p *principal) error {
	vault, err := pathVault(r)
	if err != nil {
		return err
	}
	var q store.ProposalQuery
	for k, vals := range r.URL.Query() {
		if len(vals) != 1 || len(vals[0]) > 256 {
			return errorf(http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("invalid query parameter %q", k))
		}
		switch v := vals[0]; k {
		case "vault":
			if vault != "" && v != vault {
				return errorf(http.StatusBadRequest, api.CodeInvalid, "invalid vault: the query and the path differ")
			}
			vault = v
		case "agent":
			q.Agent = v
		case "state":
			switch store.ProposalState(v) {
			case store.ProposalPending, store.ProposalApproved, store.ProposalRejected, store.ProposalExpired:
				q.State = store.ProposalState(v)
			default:
				return errorf(http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("invalid state %q: use pending, approved, rejected or expired", v))
			}
		default:
			return errorf(http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("unknown query parameter %q (use vault, agent, state)", k))
		}
	}
	q.Vault = vault
	if p.isAgent() {
		if vault != "" && vault != p.agent.Vault {
			return errAgentToken
		}
		q.Agent = p.agent.Name
	} else if vault != "" {
		if err := p.require(vault, roleRead); err != nil {
			return err
		}
	}
	ps, err := s.cfg.Store.ListProposals(q)
	if err != nil {
		return err
	}
	out := make([]api.Proposal, 0, len(ps))
	for _, pr := range ps {
		if p.isAgent() || p.allowed(pr.Vault, roleRead) {
			out = append(out, toAPIProposal(pr))
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// proposalFor loads the proposal of the path and checks the caller may see
// it: an agent only its own, a human with at least role in its vault.
// Proposals a caller may not see are not found.
func (s *Server) proposalFor(r *http.Request, p *principal, role store.Role) (store.Proposal, error) {
	id, err := proposalID(r)
	if err != nil {
		return store.Proposal{}, err
	}
	vault, err := pathVault(r)
	if err != nil {
		return store.Proposal{}, err
	}
	pr, err := s.cfg.Store.GetProposal(id)
	if err != nil {
		return store.Proposal{}, err
	}
	notFound := fmt.Errorf("proposal %d: %w", id, store.ErrNotFound)
	if vault != "" && pr.Vault != vault {
		return store.Proposal{}, notFound
	}
	if p.isAgent() {
		if pr.Agent != p.agent.Name {
			return store.Proposal{}, notFound
		}
		return pr, nil
	}
	if !p.allowed(pr.Vault, roleRead) {
		return store.Proposal{}, notFound
	}
	return pr, p.require(pr.Vault, role)
}

func (s *Server) showProposal(w http.ResponseWriter, r *http.Request, p *principal) error {
	pr, err := s.proposalFor(r, p, roleRead)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toAPIProposal(pr))
	return nil
}

func (s *Server) approveProposal(w http.ResponseWriter, r *http.Request, p *principal) error {
	pr, err := s.proposalFor(r, p, roleDecide)
	if err != nil {
		return err
	}
	var req api.ProposalApprove
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.Hash == "" {
		return errorf(http.StatusBadRequest, api.CodeInvalid,
			"invalid hash: send the content hash of the proposal you reviewed (proposal show prints it)")
	}
	ap := store.Approval{Hash: req.Hash, Credential: req.Credential}
	if req.Value != "" {
		if err := checkValue(req.Value); err != nil {
			return err
		}
		ap.Value = []byte(req.Value)
	}
	out, err := s.cfg.Store.ApproveProposal(p.actor(), pr.ID, ap)
	if err != nil {
		return err
	}
	s.log.Info("admin proposal approved", "proposal", out.ID, "vault", out.Vault, "service", out.Service.Name, "user", p.acct.Email)
	writeJSON(w, http.StatusOK, toAPIProposal(out))
	return nil
}

func (s *Server) rejectProposal(w http.ResponseWriter, r *http.Request, p *principal) error {
	pr, err := s.proposalFor(r, p, roleDecide)
	if err != nil {
		return err
	}
	var req api.ProposalReject
	if r.ContentLength != 0 {
		if err := decodeJSON(w, r, &req); err != nil {
			return err
		}
	}
	out, err := s.cfg.Store.RejectProposal(p.actor(), pr.ID, req.Hash, req.Reason)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, toAPIProposal(out))
	return nil
}
