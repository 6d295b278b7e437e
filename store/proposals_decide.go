package store

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

// A human's decision on a proposal: approve (applying it) or reject.

// decideTx loads a pending proposal for a human's decision and checks the
// content hash the human saw (hash "" skips the check, for rejections).
func decideTx(tx *bolt.Tx, id uint64, hash string, now time.Time) (*proposalRecord, error) {
	v := bucket(tx, bucketProposals).Get(be64(id))
	if v == nil {
		return nil, fmt.Errorf("proposal %d: %w", id, ErrNotFound)
	}
	rec, err := decodeProposal(be64(id), v)
	if err != nil {
		return nil, err
	}
	if st := rec.effective(now).State; st != ProposalPending {
		return nil, fmt.Errorf("proposal %d is %s: %w", id, st, ErrNotPending)
	}
	if hash != "" && subtle.ConstantTimeCompare([]byte(strings.ToLower(hash)), []byte(rec.ContentHash())) != 1 {
		return nil, fmt.Errorf("proposal %d (revision %d): %w", id, rec.Revision, ErrStale)
	}
	return &rec, nil
}

func humanOnly(actor audit.Actor) error {
	if actor.Kind != audit.ActorUser || actor.Name == "" {
		return fmt.Errorf("%w: only a human user decides proposals", ErrForbidden)
	}
	return nil
}

// ApproveProposal applies a pending proposal: in one transaction it stores
// the credential value (if given), adds the service (using ap.Credential
// instead of the requested slot if set) and marks the proposal approved by
// actor, with an audit row for each. The approval must carry the content
// hash of the proposal as shown (ErrStale otherwise); a proposal decided
// already gives ErrNotPending, so concurrent approvals apply once. A value
// for a credential that exists gives ErrExists (approve without a value to
// use it); no value for one that does not exist gives ErrInvalid.
func (s *Store) ApproveProposal(actor audit.Actor, id uint64, ap Approval) (Proposal, error) {
	if err := humanOnly(actor); err != nil {
		return Proposal{}, fmt.Errorf("approve proposal: %w", err)
	}
	if ap.Hash == "" {
		return Proposal{}, fmt.Errorf("approve proposal: %w hash: send the content hash of the proposal you saw", ErrInvalid)
	}
	if ap.Credential != "" {
		if err := policy.ValidName("credential", ap.Credential); err != nil {
			return Proposal{}, fmt.Errorf("approve proposal: %w", invalid(err))
		}
	}
	if len(ap.Value) > MaxSecretLen {
		return Proposal{}, fmt.Errorf("approve proposal: %w value: too long (at most %d bytes)", ErrInvalid, MaxSecretLen)
	}
	value := slices.Clone(ap.Value)
	now := s.now().UTC()
	var out Proposal
	s.credMu.Lock()
	defer s.credMu.Unlock()
	err := s.updateEvents(true, func(tx *bolt.Tx) ([]audit.Event, error) {
		rec, err := decideTx(tx, id, ap.Hash, now)
		if err != nil {
			return nil, err
		}
		svc := rec.Service
		if bucket(tx, bucketVaults).Get([]byte(svc.Vault)) == nil {
			return nil, vaultMissing(svc.Vault)
		}
		var events []audit.Event
		if svc.Auth.Kind == policy.AuthNone {
			if ap.Credential != "" || value != nil {
				return nil, fmt.Errorf("%w: the proposed service uses auth none; approve without a credential", ErrInvalid)
			}
		} else {
			if ap.Credential != "" {
				svc.Auth.Credential = ap.Credential
			}
			rk := pairKey(svc.Vault, svc.Auth.Credential)
			cb := bucket(tx, bucketCredentials)
			exists := cb.Get(rk) != nil
			switch {
			case value != nil && exists:
				return nil, fmt.Errorf("credential %q in vault %q: %w (approve without a value to use it, or choose another --credential)", svc.Auth.Credential, svc.Vault, ErrExists)
			case value == nil && !exists:
				return nil, fmt.Errorf("%w value: credential %q does not exist in vault %q; supply its value", ErrInvalid, svc.Auth.Credential, svc.Vault)
			case value != nil:
				if len(value) == 0 {
					return nil, fmt.Errorf("%w value: must not be empty", ErrInvalid)
				}
				ct, err := s.aead.seal(bucketCredentials, rk, value)
				if err != nil {
					return nil, err
				}
				raw, err := json.Marshal(credentialRecord{V: 1, CreatedAt: now, UpdatedAt: now, UpdatedBy: actor.Name, Ciphertext: ct})
				if err != nil {
					return nil, err
				}
				if err := cb.Put(rk, raw); err != nil {
					return nil, err
				}
				s.publishSecretOnCommit(tx, svc.Vault, svc.Auth.Credential, value)
				events = append(events, audit.Event{Actor: actor, Action: "credential.set", Vault: svc.Vault,
					Target: svc.Auth.Credential, Credential: svc.Auth.Credential, Reason: "proposal " + strconv.FormatUint(id, 10)})
			}
		}
		sb := bucket(tx, bucketServices)
		sk := pairKey(svc.Vault, svc.Name)
		if sb.Get(sk) != nil {
			return nil, fmt.Errorf("service %q in vault %q: %w (delete it first, or reject the proposal)", svc.Name, svc.Vault, ErrExists)
		}
		raw, err := json.Marshal(serviceRecord{V: serviceRecordVersion, Service: svc, CreatedAt: now, CreatedBy: actor.Name})
		if err != nil {
			return nil, err
		}
		if err := sb.Put(sk, raw); err != nil {
			return nil, err
		}
		events = append(events, audit.Event{Actor: actor, Action: "service.add", Vault: svc.Vault, Target: svc.Name,
			Service: svc.Name, Credential: svc.Auth.Credential, Host: svc.Host, Reason: "proposal " + strconv.FormatUint(id, 10)})
		rec.State, rec.DecidedAt, rec.DecidedBy, rec.Credential = ProposalApproved, now, actor.Name, svc.Auth.Credential
		if err := putProposal(bucket(tx, bucketProposals), rec); err != nil {
			return nil, err
		}
		out = rec.effective(now)
		ev := proposalEvent("proposal.approve", actor, &out)
		ev.Decision = audit.DecisionAllow
		ev.Credential = svc.Auth.Credential
		return append(events, ev), nil
	})
	if err != nil {
		return Proposal{}, fmt.Errorf("approve proposal %d: %w", id, err)
	}
	return out, nil
}

// RejectProposal marks a pending proposal rejected by actor with an optional
// note, audited as proposal.reject. hash, if not empty, must match the
// content (ErrStale).
func (s *Store) RejectProposal(actor audit.Actor, id uint64, hash, note string) (Proposal, error) {
	if err := humanOnly(actor); err != nil {
		return Proposal{}, fmt.Errorf("reject proposal: %w", err)
	}
	if err := validText("note", note, MaxProposalReason); err != nil {
		return Proposal{}, fmt.Errorf("reject proposal: %w", err)
	}
	now := s.now().UTC()
	var out Proposal
	err := s.updateEvents(false, func(tx *bolt.Tx) ([]audit.Event, error) {
		rec, err := decideTx(tx, id, hash, now)
		if err != nil {
			return nil, err
		}
		rec.State, rec.DecidedAt, rec.DecidedBy, rec.Note = ProposalRejected, now, actor.Name, strings.TrimSpace(note)
		if err := putProposal(bucket(tx, bucketProposals), rec); err != nil {
			return nil, err
		}
		out = rec.effective(now)
		ev := proposalEvent("proposal.reject", actor, &out)
		ev.Decision = audit.DecisionDeny
		return []audit.Event{ev}, nil
	})
	if err != nil {
		return Proposal{}, fmt.Errorf("reject proposal %d: %w", id, err)
	}
	return out, nil
}
