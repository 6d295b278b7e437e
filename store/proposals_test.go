package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

const proposalSentinel = "SENTINEL-proposal-7c1e-never-print"

// clock is a settable time source for Options.Now.
type clock struct{ t atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.t.Store(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) now() time.Time         { return time.Unix(0, c.t.Load()).UTC() }
func (c *clock) add(d time.Duration)    { c.t.Add(int64(d)) }
func (c *clock) opts(o Options) Options { o.Now = c.now; return o }
func proposalFor(name, host, cred string) Proposal {
	return Proposal{Service: bearer("", name, host, cred), Reason: "needs the " + name + " API"}
}

// proposalStore has vaults prod and dev, agents bot and helper in prod and
// devbot in dev.
func proposalStore(t *testing.T) (*Store, string, *clock) {
	t.Helper()
	c := newClock()
	path := filepath.Join(t.TempDir(), "agent-vault.db")
	s := openTest(t, path, c.opts(testOptions()))
	for _, v := range []string{"prod", "dev"} {
		if _, err := s.CreateVault(alice, v); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []policy.Agent{{Name: "bot", Vault: "prod"}, {Name: "helper", Vault: "prod"}, {Name: "devbot", Vault: "dev"}} {
		if _, err := s.CreateAgent(alice, a); err != nil {
			t.Fatal(err)
		}
	}
	return s, path, c
}

func countActions(t *testing.T, s *Store, action string) int {
	t.Helper()
	rows, _, err := s.AuditList(AuditQuery{Action: action, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return len(rows)
}

func TestProposalLifecycle(t *testing.T) {
	s, path, _ := proposalStore(t)
	bot := agentActor("bot")

	if _, err := s.CreateProposal(alice, proposalFor("gh", "api.github.com", "GH")); !errors.Is(err, ErrForbidden) {
		t.Fatalf("a user proposing: %v", err)
	}
	p := proposalFor("gh", "api.github.com", "GH")
	p.Vault = "dev"
	if _, err := s.CreateProposal(bot, p); !errors.Is(err, ErrForbidden) {
		t.Fatalf("proposing for another vault: %v", err)
	}
	if _, err := s.CreateProposal(agentActor("ghost"), proposalFor("gh", "api.github.com", "GH")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown agent: %v", err)
	}
	bad := proposalFor("gh", "api.github.com", "GH")
	bad.Reason = "please \x1b[2J approve"
	if _, err := s.CreateProposal(bot, bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("control characters in the reason: %v", err)
	}
	bad.Reason = " "
	if _, err := s.CreateProposal(bot, bad); !errors.Is(err, ErrInvalid) {
		t.Fatalf("empty reason: %v", err)
	}
	if _, err := s.CreateProposal(bot, proposalFor("gh", "*.com", "GH")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("invalid service: %v", err)
	}

	p1, err := s.CreateProposal(bot, proposalFor("gh", "API.github.com.", "GH"))
	if err != nil {
		t.Fatal(err)
	}
	if p1.ID == 0 || p1.Vault != "prod" || p1.Agent != "bot" || p1.State != ProposalPending || p1.Revision != 1 ||
		p1.Service.Host != "api.github.com" || len(p1.Hash) != 64 || p1.Hash != p1.ContentHash() {
		t.Fatalf("created = %+v", p1)
	}
	if !p1.ExpiresAt.Equal(p1.CreatedAt.Add(DefaultProposalTTL)) {
		t.Fatalf("expiry %v, created %v", p1.ExpiresAt, p1.CreatedAt)
	}
	// the same content again changes nothing
	again, err := s.CreateProposal(bot, proposalFor("gh", "api.github.com", "GH"))
	if err != nil || again.ID != p1.ID || again.Revision != 1 || again.Hash != p1.Hash {
		t.Fatalf("same proposal again = %+v, %v", again, err)
	}
	// the agent replaces it: same id, new revision and hash
	p2, err := s.CreateProposal(bot, proposalFor("gh", "evil.example.com", "GH"))
	if err != nil || p2.ID != p1.ID || p2.Revision != 2 || p2.Hash == p1.Hash {
		t.Fatalf("replaced = %+v, %v", p2, err)
	}
	if got, err := s.GetProposal(p1.ID); err != nil || got.Hash != p2.Hash || got.Service.Host != "evil.example.com" {
		t.Fatalf("get = %+v, %v", got, err)
	}
	// approving what was shown before the change fails, and changes nothing
	if _, err := s.ApproveProposal(alice, p1.ID, Approval{Hash: p1.Hash, Value: []byte(proposalSentinel)}); !errors.Is(err, ErrStale) {
		t.Fatalf("stale approval: %v", err)
	}
	if _, ok := s.Secret("prod", "GH"); ok {
		t.Fatal("a stale approval stored the credential")
	}
	if _, err := s.ApproveProposal(bot, p1.ID, Approval{Hash: p2.Hash, Value: []byte("x")}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("an agent approving: %v", err)
	}
	if _, err := s.ApproveProposal(alice, p1.ID, Approval{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("approval without a hash: %v", err)
	}
	if _, err := s.ApproveProposal(alice, p1.ID, Approval{Hash: p2.Hash}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("approval without a value for a missing credential: %v", err)
	}
	before, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	applied := 0
	s.SetOnPolicyChange(func() { applied++ })
	ap, err := s.ApproveProposal(alice, p1.ID, Approval{Hash: strings.ToUpper(p2.Hash), Value: []byte(proposalSentinel)})
	if err != nil {
		t.Fatal(err)
	}
	if ap.State != ProposalApproved || ap.DecidedBy != alice.Name || ap.Credential != "GH" {
		t.Fatalf("approved = %+v", ap)
	}
	if applied != 1 {
		t.Fatalf("approval ran the policy hook %d times, want 1", applied)
	}
	if v, ok := s.Secret("prod", "GH"); !ok || string(v) != proposalSentinel {
		t.Fatal("approved credential not served")
	}
	svcs, err := s.Services("prod")
	if err != nil || len(svcs) != 1 || svcs[0].Name != "gh" || svcs[0].Host != "evil.example.com" {
		t.Fatalf("services after approval = %+v, %v", svcs, err)
	}
	after, _ := s.Snapshot()
	if after.Version() <= before.Version() || !after.HostAllowed("prod", "evil.example.com") {
		t.Fatal("the snapshot does not reflect the approval")
	}
	if _, err := s.ApproveProposal(alice, p1.ID, Approval{Hash: p2.Hash, Value: []byte("y")}); !errors.Is(err, ErrNotPending) {
		t.Fatalf("second approval: %v", err)
	}
	if _, err := s.RejectProposal(alice, p1.ID, "", "late"); !errors.Is(err, ErrNotPending) {
		t.Fatalf("reject after approval: %v", err)
	}
	rows, _, err := s.AuditList(AuditQuery{Action: "proposal.approve"})
	if err != nil || len(rows) != 1 || rows[0].Actor != alice || rows[0].Decision != audit.DecisionAllow || rows[0].Vault != "prod" {
		t.Fatalf("approve rows = %+v, %v", rows, err)
	}
	for _, a := range []string{"proposal.create", "proposal.update", "credential.set", "service.add"} {
		if countActions(t, s, a) != 1 {
			t.Errorf("want one %s row", a)
		}
	}
	if _, err := s.AuditVerify(); err != nil {
		t.Fatal(err)
	}

	// reject
	p3, err := s.CreateProposal(bot, proposalFor("slack", "slack.com", "SLACK"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RejectProposal(bot, p3.ID, "", ""); !errors.Is(err, ErrForbidden) {
		t.Fatalf("an agent rejecting: %v", err)
	}
	rj, err := s.RejectProposal(alice, p3.ID, p3.Hash, "not needed")
	if err != nil || rj.State != ProposalRejected || rj.Note != "not needed" || rj.DecidedBy != alice.Name {
		t.Fatalf("rejected = %+v, %v", rj, err)
	}
	list, err := s.ListProposals(ProposalQuery{Vault: "prod"})
	if err != nil || len(list) != 2 || list[0].ID != p3.ID {
		t.Fatalf("list = %+v, %v", list, err)
	}
	if l, _ := s.ListProposals(ProposalQuery{State: ProposalPending}); len(l) != 0 {
		t.Fatalf("pending after decisions = %+v", l)
	}

	mustClose(t, s)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(proposalSentinel)) {
		t.Fatal("the approved value is in clear in the store file")
	}
}

func TestApproveWithExistingOrChosenCredential(t *testing.T) {
	s, _, _ := proposalStore(t)
	bot := agentActor("bot")
	if _, err := s.SetCredential(alice, "prod", "SHARED", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	p, err := s.CreateProposal(bot, proposalFor("a", "a.example.com", "SHARED"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ApproveProposal(alice, p.ID, Approval{Hash: p.Hash, Value: []byte("v2")}); !errors.Is(err, ErrExists) {
		t.Fatalf("a value for an existing credential: %v", err)
	}
	if v, _ := s.Secret("prod", "SHARED"); string(v) != "v1" {
		t.Fatal("a refused approval replaced the credential")
	}
	if _, err := s.ApproveProposal(alice, p.ID, Approval{Hash: p.Hash}); err != nil {
		t.Fatal(err)
	}
	q, err := s.CreateProposal(bot, proposalFor("b", "b.example.com", "WANTED"))
	if err != nil {
		t.Fatal(err)
	}
	ap, err := s.ApproveProposal(alice, q.ID, Approval{Hash: q.Hash, Credential: "SHARED"})
	if err != nil || ap.Credential != "SHARED" {
		t.Fatalf("approve with another credential = %+v, %v", ap, err)
	}
	svcs, _ := s.Services("prod")
	if len(svcs) != 2 || svcs[1].Auth.Credential != "SHARED" {
		t.Fatalf("services = %+v", svcs)
	}
	none := Proposal{Service: policy.Service{Name: "open", Host: "open.example.com", Auth: policy.Auth{Kind: policy.AuthNone}}, Reason: "docs"}
	n, err := s.CreateProposal(bot, none)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ApproveProposal(alice, n.ID, Approval{Hash: n.Hash, Value: []byte("x")}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a value for auth none: %v", err)
	}
	if _, err := s.ApproveProposal(alice, n.ID, Approval{Hash: n.Hash}); err != nil {
		t.Fatal(err)
	}
	// a proposal for a service name that exists meanwhile cannot be applied
	d, err := s.CreateProposal(bot, proposalFor("a", "other.example.com", "SHARED"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ApproveProposal(alice, d.ID, Approval{Hash: d.Hash}); !errors.Is(err, ErrExists) {
		t.Fatalf("approval of a taken service name: %v", err)
	}
	if got, _ := s.GetProposal(d.ID); got.State != ProposalPending {
		t.Fatalf("a failed approval changed the state to %s", got.State)
	}
}

func TestConcurrentApprovalsApplyOnce(t *testing.T) {
	s, _, _ := proposalStore(t)
	p, err := s.CreateProposal(agentActor("bot"), proposalFor("gh", "api.github.com", "GH"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	var wg sync.WaitGroup
	var ok, notPending atomic.Int32
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			actor := audit.Actor{Kind: audit.ActorUser, Name: "approver" + string(rune('a'+i)) + "@example.com"}
			_, err := s.ApproveProposal(actor, p.ID, Approval{Hash: p.Hash, Value: []byte("value-" + string(rune('a'+i)))})
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, ErrNotPending):
				notPending.Add(1)
			default:
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if ok.Load() != 1 || notPending.Load() != n-1 {
		t.Fatalf("%d approvals applied, %d refused as decided", ok.Load(), notPending.Load())
	}
	for _, a := range []string{"proposal.approve", "service.add", "credential.set"} {
		if c := countActions(t, s, a); c != 1 {
			t.Errorf("%d %s rows", c, a)
		}
	}
	got, _ := s.GetProposal(p.ID)
	v, _ := s.Secret("prod", "GH")
	if "value-"+strings.TrimSuffix(strings.TrimPrefix(got.DecidedBy, "approver"), "@example.com") != string(v) {
		t.Fatalf("the served value %q is not the winner's (%s)", v, got.DecidedBy)
	}
}

func TestProposalLimitsAndExpiry(t *testing.T) {
	s, _, c := proposalStore(t)
	if err := s.SetProposalSettings(alice, ProposalSettings{TTL: time.Hour, MaxPendingPerAgent: 2, MaxPendingPerVault: 3}); err != nil {
		t.Fatal(err)
	}
	bot, helper := agentActor("bot"), agentActor("helper")
	for _, name := range []string{"a", "b"} {
		if _, err := s.CreateProposal(bot, proposalFor(name, name+".example.com", "K")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.CreateProposal(bot, proposalFor("c", "c.example.com", "K")); !errors.Is(err, ErrLimit) {
		t.Fatalf("third pending for an agent: %v", err)
	}
	// replacing a pending one is not a new one
	if _, err := s.CreateProposal(bot, proposalFor("b", "b2.example.com", "K")); err != nil {
		t.Fatalf("replace at the limit: %v", err)
	}
	if _, err := s.CreateProposal(helper, proposalFor("h1", "h1.example.com", "K")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateProposal(helper, proposalFor("h2", "h2.example.com", "K")); !errors.Is(err, ErrLimit) {
		t.Fatalf("fourth pending in a vault: %v", err)
	}
	// another vault has its own count
	if _, err := s.CreateProposal(agentActor("devbot"), proposalFor("d", "d.example.com", "K")); err != nil {
		t.Fatal(err)
	}

	c.add(time.Hour)
	list, err := s.ListProposals(ProposalQuery{Vault: "prod"})
	if err != nil || len(list) != 3 {
		t.Fatalf("list = %v, %v", list, err)
	}
	for _, p := range list {
		if p.State != ProposalExpired {
			t.Fatalf("proposal %d is %s after its TTL", p.ID, p.State)
		}
	}
	if _, err := s.ApproveProposal(alice, list[0].ID, Approval{Hash: list[0].Hash, Value: []byte("v")}); !errors.Is(err, ErrNotPending) {
		t.Fatalf("approve an expired proposal: %v", err)
	}
	// expired ones free the limits (and are recorded on the way)
	if _, err := s.CreateProposal(bot, proposalFor("c", "c.example.com", "K")); err != nil {
		t.Fatalf("propose after expiry: %v", err)
	}
	if got := countActions(t, s, "proposal.expire"); got != 3 {
		t.Fatalf("%d proposal.expire rows after the prod sweep, want 3", got)
	}
	n, err := s.ExpireProposals()
	if err != nil || n != 1 {
		t.Fatalf("ExpireProposals = %d, %v (the dev one is left)", n, err)
	}

	// a revoked agent cannot propose
	if err := s.RevokeAgent(alice, "helper"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateProposal(helper, proposalFor("z", "z.example.com", "K")); !errors.Is(err, ErrForbidden) {
		t.Fatalf("revoked agent proposing: %v", err)
	}
	if _, err := s.AuditVerify(); err != nil {
		t.Fatal(err)
	}
}
