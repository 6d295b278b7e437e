package admin

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/store"
)

// The web UI's pages and form actions (the frame is in ui.go). Each one
// checks the principal's role with the same calls as the API handler that
// does the same thing.

type vaultRow struct {
	store.Vault
	Role                                   store.Role
	Services, Agents, Credentials, Pending int
}

// uiVaults is the overview: the vaults the user may read, with counts.
func (s *Server) uiVaults(w http.ResponseWriter, r *http.Request, p *principal, pg *uiPage) error {
	vs, err := s.cfg.Store.Vaults()
	if err != nil {
		return err
	}
	pending, err := s.cfg.Store.ListProposals(store.ProposalQuery{State: store.ProposalPending})
	if err != nil {
		return err
	}
	var rows []vaultRow
	for _, v := range vs {
		if !p.allowed(v.Name, roleRead) {
			continue
		}
		row := vaultRow{Vault: v, Role: p.acct.VaultRole(v.Name)}
		svcs, err := s.cfg.Store.Services(v.Name)
		if err != nil {
			return err
		}
		as, err := s.cfg.Store.Agents(v.Name)
		if err != nil {
			return err
		}
		cs, err := s.cfg.Store.Credentials(v.Name)
		if err != nil {
			return err
		}
		row.Services, row.Agents, row.Credentials = len(svcs), len(as), len(cs)
		for _, pr := range pending {
			if pr.Vault == v.Name {
				row.Pending++
			}
		}
		rows = append(rows, row)
	}
	pg.Title, pg.Nav, pg.Flash = "Vaults", "vaults", flash(r)
	pg.Data = struct{ Vaults []vaultRow }{rows}
	s.render(w, http.StatusOK, "vaults", pg)
	return nil
}

type agentRow struct {
	store.AgentRecord
	Status string // active, revoked or expired
}

type vaultData struct {
	Name        string
	Role        store.Role
	CanManage   bool
	Services    []policy.Service
	Agents      []agentRow
	Credentials []store.Credential
}

// uiVault shows one vault: services, agents (revoke for admins) and
// credential names (set value for admins).
func (s *Server) uiVault(w http.ResponseWriter, r *http.Request, p *principal, pg *uiPage) error {
	vault, err := pathName(r, "vault", "vault")
	if err != nil {
		return err
	}
	if err := p.require(vault, roleRead); err != nil {
		return err
	}
	d := vaultData{Name: vault, Role: p.acct.VaultRole(vault), CanManage: p.allowed(vault, roleManage)}
	if d.Services, err = s.cfg.Store.Services(vault); err != nil {
		return err
	}
	as, err := s.cfg.Store.Agents(vault)
	if err != nil {
		return err
	}
	now := s.now()
	for _, a := range as {
		st := "active"
		switch {
		case a.Revoked:
			st = "revoked"
		case !a.Active(now):
			st = "expired"
		}
		d.Agents = append(d.Agents, agentRow{AgentRecord: a, Status: st})
	}
	if d.Credentials, err = s.cfg.Store.Credentials(vault); err != nil {
		return err
	}
	pg.Title, pg.Nav, pg.Flash, pg.Data = "Vault "+vault, "vaults", flash(r), d
	s.render(w, http.StatusOK, "vault", pg)
	return nil
}

// uiSetCredential stores a credential value from the vault page's form;
// the value is never echoed.
func (s *Server) uiSetCredential(w http.ResponseWriter, r *http.Request, p *principal, _ *uiPage) error {
	vault, err := pathName(r, "vault", "vault")
	if err != nil {
		return err
	}
	if err := p.require(vault, roleManage); err != nil {
		return err
	}
	key := r.PostForm.Get("key")
	if err := policy.ValidName("credential", key); err != nil {
		return err
	}
	value := r.PostForm.Get("value")
	if err := checkValue(value); err != nil {
		return err
	}
	if _, err := s.cfg.Store.SetCredential(p.actor(), vault, key, []byte(value)); err != nil {
		return err
	}
	seeOther(w, r, "/ui/vaults/"+vault, "credential")
	return nil
}

// uiRevokeAgent revokes an agent of the page's vault.
func (s *Server) uiRevokeAgent(w http.ResponseWriter, r *http.Request, p *principal, _ *uiPage) error {
	name, err := s.agentTarget(r, p)
	if err != nil {
		return err
	}
	if err := s.cfg.Store.RevokeAgent(p.actor(), name); err != nil {
		return err
	}
	s.log.Info("admin ui agent revoked", "agent", name, "user", p.acct.Email)
	seeOther(w, r, "/ui/vaults/"+r.PathValue("vault"), "revoked")
	return nil
}

type proposalRow struct {
	store.Proposal
	CanDecide       bool
	NeedsCredential bool
	CredExists      bool
}

var proposalStates = []store.ProposalState{store.ProposalPending, store.ProposalApproved, store.ProposalRejected, store.ProposalExpired}

// uiProposals lists proposals of the vaults the user may read; approvers
// get the approve and reject forms, carrying the content hash shown.
func (s *Server) uiProposals(w http.ResponseWriter, r *http.Request, p *principal, pg *uiPage) error {
	state := store.ProposalState(r.URL.Query().Get("state"))
	if state == "" {
		state = store.ProposalPending
	}
	if !slices.Contains(proposalStates, state) {
		return errorf(http.StatusBadRequest, api.CodeInvalid, "invalid state: use pending, approved, rejected or expired")
	}
	ps, err := s.cfg.Store.ListProposals(store.ProposalQuery{State: state})
	if err != nil {
		return err
	}
	creds := map[string]map[string]bool{} // vault → credential names, read once per vault
	var rows []proposalRow
	for _, pr := range ps {
		if !p.allowed(pr.Vault, roleRead) {
			continue
		}
		row := proposalRow{Proposal: pr, CanDecide: pr.State == store.ProposalPending && p.allowed(pr.Vault, roleDecide),
			NeedsCredential: pr.Service.Auth.Kind != policy.AuthNone}
		if row.NeedsCredential && pr.Service.Auth.Credential != "" {
			names, ok := creds[pr.Vault]
			if !ok {
				names = map[string]bool{}
				cs, err := s.cfg.Store.Credentials(pr.Vault)
				if err != nil && !isNotFound(err) {
					return err
				}
				for _, c := range cs {
					names[c.Key] = true
				}
				creds[pr.Vault] = names
			}
			row.CredExists = names[pr.Service.Auth.Credential]
		}
		rows = append(rows, row)
	}
	pg.Title, pg.Nav, pg.Flash = "Proposals", "proposals", flash(r)
	pg.Data = struct {
		State     store.ProposalState
		States    []store.ProposalState
		Proposals []proposalRow
	}{state, proposalStates, rows}
	s.render(w, http.StatusOK, "proposals", pg)
	return nil
}

func isNotFound(err error) bool {
	e := mapError(err)
	return e != nil && e.status == http.StatusNotFound
}

var errUIHash = errorf(http.StatusBadRequest, api.CodeInvalid,
	"the form carries no content hash: reload the proposals page and decide again")

// uiApprove approves a proposal with the hash the page showed, storing the
// credential value typed into the form (if any).
func (s *Server) uiApprove(w http.ResponseWriter, r *http.Request, p *principal, _ *uiPage) error {
	pr, err := s.proposalFor(r, p, roleDecide)
	if err != nil {
		return err
	}
	f := r.PostForm
	ap := store.Approval{Hash: f.Get("hash")}
	if ap.Hash == "" {
		return errUIHash
	}
	if c := f.Get("credential"); c != "" && c != pr.Service.Auth.Credential {
		ap.Credential = c
	}
	if v := f.Get("value"); v != "" {
		if err := checkValue(v); err != nil {
			return err
		}
		ap.Value = []byte(v)
	}
	out, err := s.cfg.Store.ApproveProposal(p.actor(), pr.ID, ap)
	if err != nil {
		return err
	}
	s.log.Info("admin proposal approved", "proposal", out.ID, "vault", out.Vault, "service", out.Service.Name, "user", p.acct.Email)
	seeOther(w, r, "/ui/proposals", "approved")
	return nil
}

// uiReject rejects a proposal with the hash the page showed.
func (s *Server) uiReject(w http.ResponseWriter, r *http.Request, p *principal, _ *uiPage) error {
	pr, err := s.proposalFor(r, p, roleDecide)
	if err != nil {
		return err
	}
	hash := r.PostForm.Get("hash")
	if hash == "" {
		return errUIHash
	}
	if _, err := s.cfg.Store.RejectProposal(p.actor(), pr.ID, hash, r.PostForm.Get("note")); err != nil {
		return err
	}
	seeOther(w, r, "/ui/proposals", "rejected")
	return nil
}

// uiAuditLimit is how many rows one audit page shows.
const uiAuditLimit = 100

// uiAudit lists the latest audit rows with the API's filters; the live
// view follows the API's event stream with the same filters.
func (s *Server) uiAudit(w http.ResponseWriter, r *http.Request, p *principal, pg *uiPage) error {
	// empty form fields mean "no filter"
	vals := url.Values{}
	for k, v := range r.URL.Query() {
		if len(v) == 1 && v[0] == "" {
			continue
		}
		vals[k] = v
	}
	q, err := parseAuditQuery(vals, s.now())
	if err != nil {
		return err
	}
	// the vaults whose log the user may read; without the instance-wide
	// role, one of them must be chosen
	vs, err := s.cfg.Store.Vaults()
	if err != nil {
		return err
	}
	all := p.allowed("", roleAudit)
	var names []string
	for _, v := range vs {
		if p.allowed(v.Name, roleAudit) {
			names = append(names, v.Name)
		}
	}
	if q.Vault == "" && !all && len(names) > 0 {
		q.Vault = names[0]
		vals.Set("vault", q.Vault)
	}
	if err := auditScope(p, q); err != nil {
		return err
	}
	if q.Limit == 0 {
		q.Limit = uiAuditLimit
	}
	rows, next, err := s.cfg.Store.AuditList(q)
	if err != nil {
		return err
	}
	d := struct {
		Filter    store.AuditQuery
		Since     string
		Vaults    []string
		AllVaults bool
		Rows      []audit.Event
		OlderURL  string
		StreamURL string
	}{Filter: q, Since: vals.Get("since"), Vaults: names, AllVaults: all, Rows: rows}
	if next != 0 {
		older := cloneValues(vals)
		older.Set("cursor", strconv.FormatUint(next, 10))
		d.OlderURL = "/ui/audit?" + older.Encode()
	}
	if q.Cursor == 0 {
		live := cloneValues(vals)
		live.Del("limit")
		if live.Has("since") {
			// the stream starts with the next new row: a relative since
			// would only filter by the time the page loaded
			live.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
		}
		if len(rows) > 0 {
			live.Set("after", strconv.FormatUint(rows[0].Seq, 10))
		}
		d.StreamURL = api.Prefix + "/audit/stream?" + live.Encode()
	}
	pg.Title, pg.Nav, pg.Data = "Audit log", "audit", d
	s.render(w, http.StatusOK, "audit", pg)
	return nil
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = slices.Clone(vs)
	}
	return out
}
