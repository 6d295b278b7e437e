package store

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

// Proposals: an agent asks for a service (and for a credential slot a human
// fills) and says why; a human approves or rejects. The proposals bucket
// holds proposals/<8-byte id> = proposalRecord (JSON). An approval is bound
// to the content hash of the exact proposal the human saw, and applies the
// credential, the service and the new state in one transaction with their
// audit rows, so concurrent approvals apply once.

// Errors of the proposal workflow, next to those of api.go.
var (
	// ErrStale: the proposal changed since the human saw it (its content
	// hash differs from the one the approval carries).
	ErrStale = errors.New("the proposal changed since it was shown: show it again and approve the new content")
	// ErrNotPending: the proposal was already approved, rejected or expired.
	ErrNotPending = errors.New("the proposal is no longer pending")
	// ErrLimit: too many pending proposals for the agent or the vault.
	ErrLimit = errors.New("too many pending proposals")
	// ErrForbidden: the actor may not do this (an agent approving, or acting
	// outside its own vault).
	ErrForbidden = errors.New("not allowed for this actor")
)

// ProposalState is where a proposal is in its life.
type ProposalState string

// The states: pending, then approved, rejected or expired.
const (
	ProposalPending  ProposalState = "pending"
	ProposalApproved ProposalState = "approved"
	ProposalRejected ProposalState = "rejected"
	ProposalExpired  ProposalState = "expired"
)

// Proposal defaults (see ProposalSettings).
const (
	DefaultProposalTTL        = 7 * 24 * time.Hour
	DefaultMaxPendingPerAgent = 10
	DefaultMaxPendingPerVault = 50
	// MaxProposalReason bounds the agent's explanation.
	MaxProposalReason = 2000
)

// Proposal is an agent's request for a service. Service.Auth.Credential is
// the credential slot a human fills at approval (empty for auth none).
type Proposal struct {
	ID        uint64         `json:"id"`
	Vault     string         `json:"vault"`
	Agent     string         `json:"agent"`
	Service   policy.Service `json:"service"`
	Reason    string         `json:"reason"`
	State     ProposalState  `json:"state"`
	Revision  int            `json:"revision"` // 1, +1 on every change of content
	Hash      string         `json:"hash"`     // content hash (ContentHash)
	CreatedAt time.Time      `json:"created_at"`
	UpdatedAt time.Time      `json:"updated_at"`
	ExpiresAt time.Time      `json:"expires_at"`
	DecidedAt time.Time      `json:"decided_at,omitzero"`
	DecidedBy string         `json:"decided_by,omitempty"`
	Note      string         `json:"note,omitempty"` // the human's reason for a rejection
	// Credential is the key the approval used (the requested slot, or the
	// one the approver chose instead).
	Credential string `json:"credential,omitempty"`
}

// ContentHash is the SHA-256 (hex) of what a human approves: the proposal's
// id, vault, agent, service and reason. Any change of content changes it.
func (p *Proposal) ContentHash() string {
	body, _ := json.Marshal(struct {
		V       int            `json:"v"`
		ID      uint64         `json:"id"`
		Vault   string         `json:"vault"`
		Agent   string         `json:"agent"`
		Service policy.Service `json:"service"`
		Reason  string         `json:"reason"`
	}{1, p.ID, p.Vault, p.Agent, p.Service, p.Reason})
	sum := sha256.Sum256(body)
	return hex.EncodeToString(sum[:])
}

// proposalRecord is proposals/<8-byte id>.
type proposalRecord struct {
	V int `json:"v"`
	Proposal
}

// Approval is a human's decision to apply a proposal.
type Approval struct {
	Hash       string // the content hash the human saw (required)
	Credential string // optional: fill this key instead of the requested slot
	Value      []byte // the credential value; nil means use the existing credential
}

// ProposalQuery filters ListProposals; zero fields do not filter.
type ProposalQuery struct {
	Vault string
	Agent string
	State ProposalState
}

// ProposalSettings are the workflow's limits, kept in the meta bucket.
type ProposalSettings struct {
	TTL                time.Duration `json:"ttl"`
	MaxPendingPerAgent int           `json:"max_pending_per_agent"`
	MaxPendingPerVault int           `json:"max_pending_per_vault"`
}

var metaProposalSettings = []byte("proposal_settings")

func (ps *ProposalSettings) fill() {
	if ps.TTL <= 0 {
		ps.TTL = DefaultProposalTTL
	}
	if ps.MaxPendingPerAgent <= 0 {
		ps.MaxPendingPerAgent = DefaultMaxPendingPerAgent
	}
	if ps.MaxPendingPerVault <= 0 {
		ps.MaxPendingPerVault = DefaultMaxPendingPerVault
	}
}

func readProposalSettings(tx *bolt.Tx) ProposalSettings {
	var ps ProposalSettings
	if raw := bucket(tx, bucketMeta).Get(metaProposalSettings); raw != nil {
		_ = json.Unmarshal(raw, &ps)
	}
	ps.fill()
	return ps
}

// ProposalSettings returns the limits in force (defaults where unset).
func (s *Store) ProposalSettings() (ProposalSettings, error) {
	var ps ProposalSettings
	err := s.db.View(func(tx *bolt.Tx) error { ps = readProposalSettings(tx); return nil })
	if err != nil {
		return ps, fmt.Errorf("read proposal settings: %w", err)
	}
	return ps, nil
}

// SetProposalSettings changes the limits (zero fields mean the defaults),
// audited as proposal.settings.
func (s *Store) SetProposalSettings(actor audit.Actor, ps ProposalSettings) error {
	if ps.TTL < 0 || ps.MaxPendingPerAgent < 0 || ps.MaxPendingPerVault < 0 {
		return fmt.Errorf("set proposal settings: %w: negative limit", ErrInvalid)
	}
	ps.fill()
	raw, err := json.Marshal(ps)
	if err != nil {
		return fmt.Errorf("set proposal settings: %w", err)
	}
	ev := audit.Event{Actor: actor, Action: "proposal.settings",
		Target: fmt.Sprintf("ttl=%s per_agent=%d per_vault=%d", ps.TTL, ps.MaxPendingPerAgent, ps.MaxPendingPerVault)}
	err = s.updateEvents(false, func(tx *bolt.Tx) ([]audit.Event, error) {
		return []audit.Event{ev}, bucket(tx, bucketMeta).Put(metaProposalSettings, raw)
	})
	if err != nil {
		return fmt.Errorf("set proposal settings: %w", err)
	}
	return nil
}

// validText refuses control characters (but newline and tab) so proposal
// text cannot drive a human's terminal, and bounds its length.
func validText(field, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%w %s: %d bytes is too long (at most %d)", ErrInvalid, field, len(s), max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w %s: not valid UTF-8", ErrInvalid, field)
	}
	for _, r := range s {
		if (r < 0x20 && r != '\n' && r != '\t') || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == 0x2028 || r == 0x2029 ||
			(r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) {
			return fmt.Errorf("%w %s: control characters are not allowed", ErrInvalid, field)
		}
	}
	return nil
}

// effective returns the proposal with its state as of now (a pending
// proposal past its expiry reads as expired) and its content hash.
func (r *proposalRecord) effective(now time.Time) Proposal {
	p := r.Proposal
	if p.State == ProposalPending && !now.Before(p.ExpiresAt) {
		p.State = ProposalExpired
	}
	p.Hash = p.ContentHash()
	return p
}

func decodeProposal(k, v []byte) (proposalRecord, error) {
	var rec proposalRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return rec, fmt.Errorf("decode proposal %d: %w", binary.BigEndian.Uint64(k), err)
	}
	rec.ID = binary.BigEndian.Uint64(k)
	return rec, nil
}

func putProposal(b *bolt.Bucket, rec *proposalRecord) error {
	rec.V = 1
	rec.Hash = ""
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return b.Put(be64(rec.ID), raw)
}

func proposalEvent(action string, actor audit.Actor, p *Proposal) audit.Event {
	return audit.Event{Actor: actor, Action: action, Vault: p.Vault, Target: strconv.FormatUint(p.ID, 10),
		Service: p.Service.Name, Host: p.Service.Host, Credential: p.Service.Auth.Credential}
}

// CreateProposal records an agent's proposal. actor must be the agent, as
// the data path or the admin API identified it (by network identity or
// token, never by the request body): p.Agent is set from it, and p.Vault
// must be the agent's vault (empty means that vault). Proposing again for
// the same service name while the agent's earlier proposal is pending
// replaces that proposal's content (same id, a new revision and content
// hash). Limits: ErrLimit past the pending maximum per agent or vault.
// Audited as proposal.create or proposal.update.
func (s *Store) CreateProposal(actor audit.Actor, p Proposal) (Proposal, error) {
	if actor.Kind != audit.ActorAgent || actor.Name == "" {
		return Proposal{}, fmt.Errorf("create proposal: %w: only an agent proposes", ErrForbidden)
	}
	svc := p.Service
	svc.Methods = slices.Clone(svc.Methods)
	svc.Auth.In = slices.Clone(svc.Auth.In)
	svc.Auth.BodyFields = slices.Clone(svc.Auth.BodyFields)
	if err := validText("reason", p.Reason, MaxProposalReason); err != nil {
		return Proposal{}, fmt.Errorf("create proposal: %w", err)
	}
	reason := strings.TrimSpace(p.Reason)
	if reason == "" {
		return Proposal{}, fmt.Errorf("create proposal: %w reason: say why the agent needs this service", ErrInvalid)
	}
	now := s.now().UTC()
	var out Proposal
	var events []audit.Event
	err := s.updateEvents(false, func(tx *bolt.Tx) ([]audit.Event, error) {
		raw := bucket(tx, bucketAgents).Get([]byte(actor.Name))
		if raw == nil {
			return nil, fmt.Errorf("agent %q: %w", actor.Name, ErrNotFound)
		}
		agent, err := decodeAgent([]byte(actor.Name), raw)
		if err != nil {
			return nil, err
		}
		if !agent.Active(now) {
			return nil, fmt.Errorf("%w: agent %q is revoked or expired", ErrForbidden, actor.Name)
		}
		vault := p.Vault
		if vault == "" {
			vault = agent.Vault
		}
		if vault != agent.Vault {
			return nil, fmt.Errorf("%w: agent %q may only propose for its own vault %q", ErrForbidden, actor.Name, agent.Vault)
		}
		svc.Vault = vault
		svc.Normalize()
		if err := svc.Validate(); err != nil {
			return nil, invalid(err)
		}
		ps := readProposalSettings(tx)
		b := bucket(tx, bucketProposals)
		events, err = s.expireTx(b, now, vault)
		if err != nil {
			return nil, err
		}
		var same *proposalRecord
		perAgent, perVault := 0, 0
		err = b.ForEach(func(k, v []byte) error {
			rec, err := decodeProposal(k, v)
			if err != nil {
				return err
			}
			if rec.State != ProposalPending || rec.Vault != vault {
				return nil
			}
			perVault++
			if rec.Agent == actor.Name {
				perAgent++
				if rec.Service.Name == svc.Name {
					same = &rec
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if same != nil {
			if !sameContent(same, &svc, reason) {
				same.Service, same.Reason = svc, reason
				same.Revision++
				same.UpdatedAt = now
				same.ExpiresAt = now.Add(ps.TTL)
				if err := putProposal(b, same); err != nil {
					return nil, err
				}
				out = same.effective(now)
				ev := proposalEvent("proposal.update", actor, &out)
				ev.Reason = "revision " + strconv.Itoa(out.Revision)
				return append(events, ev), nil
			}
			out = same.effective(now)
			return events, nil
		}
		if perAgent >= ps.MaxPendingPerAgent {
			return nil, fmt.Errorf("%w: agent %q has %d pending (at most %d); wait for a human to decide", ErrLimit, actor.Name, perAgent, ps.MaxPendingPerAgent)
		}
		if perVault >= ps.MaxPendingPerVault {
			return nil, fmt.Errorf("%w: vault %q has %d pending (at most %d)", ErrLimit, vault, perVault, ps.MaxPendingPerVault)
		}
		id, err := b.NextSequence()
		if err != nil {
			return nil, err
		}
		rec := proposalRecord{Proposal: Proposal{ID: id, Vault: vault, Agent: actor.Name, Service: svc, Reason: reason,
			State: ProposalPending, Revision: 1, CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(ps.TTL)}}
		if err := putProposal(b, &rec); err != nil {
			return nil, err
		}
		out = rec.effective(now)
		return append(events, proposalEvent("proposal.create", actor, &out)), nil
	})
	if err != nil {
		return Proposal{}, fmt.Errorf("create proposal: %w", err)
	}
	return out, nil
}

func sameContent(rec *proposalRecord, svc *policy.Service, reason string) bool {
	a, _ := json.Marshal(rec.Service)
	b, _ := json.Marshal(svc)
	return string(a) == string(b) && rec.Reason == reason
}

// expireTx marks overdue pending proposals (of one vault, or all when vault
// is "") expired and returns their audit events.
func (s *Store) expireTx(b *bolt.Bucket, now time.Time, vault string) ([]audit.Event, error) {
	var due []proposalRecord
	err := b.ForEach(func(k, v []byte) error {
		rec, err := decodeProposal(k, v)
		if err != nil {
			return err
		}
		if rec.State == ProposalPending && !now.Before(rec.ExpiresAt) && (vault == "" || rec.Vault == vault) {
			due = append(due, rec)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var events []audit.Event
	for i := range due {
		rec := &due[i]
		rec.State = ProposalExpired
		rec.DecidedAt = now
		if err := putProposal(b, rec); err != nil {
			return nil, err
		}
		events = append(events, proposalEvent("proposal.expire", audit.System, &rec.Proposal))
	}
	return events, nil
}

// ExpireProposals marks every pending proposal past its expiry expired,
// audited as proposal.expire, and returns how many it marked. Reads already
// report them expired; this records it.
func (s *Store) ExpireProposals() (int, error) {
	n := 0
	err := s.updateEvents(false, func(tx *bolt.Tx) ([]audit.Event, error) {
		evs, err := s.expireTx(bucket(tx, bucketProposals), s.now().UTC(), "")
		n = len(evs)
		return evs, err
	})
	if err != nil {
		return 0, fmt.Errorf("expire proposals: %w", err)
	}
	return n, nil
}

// GetProposal returns one proposal with its current state and content hash.
func (s *Store) GetProposal(id uint64) (Proposal, error) {
	now := s.now()
	var p Proposal
	err := s.db.View(func(tx *bolt.Tx) error {
		v := bucket(tx, bucketProposals).Get(be64(id))
		if v == nil {
			return fmt.Errorf("proposal %d: %w", id, ErrNotFound)
		}
		rec, err := decodeProposal(be64(id), v)
		if err != nil {
			return err
		}
		p = rec.effective(now)
		return nil
	})
	return p, err
}

// ListProposals returns proposals matching q, newest first.
func (s *Store) ListProposals(q ProposalQuery) ([]Proposal, error) {
	now := s.now()
	var out []Proposal
	err := s.db.View(func(tx *bolt.Tx) error {
		c := bucket(tx, bucketProposals).Cursor()
		for k, v := c.Last(); k != nil; k, v = c.Prev() {
			rec, err := decodeProposal(k, v)
			if err != nil {
				return err
			}
			p := rec.effective(now)
			if (q.Vault == "" || p.Vault == q.Vault) && (q.Agent == "" || p.Agent == q.Agent) && (q.State == "" || p.State == q.State) {
				out = append(out, p)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list proposals: %w", err)
	}
	return out, nil
}
