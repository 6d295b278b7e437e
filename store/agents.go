package store

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

// agentRecord is agents/<name>. Agent names are unique across vaults. The
// token hash (policy.Agent hides it from JSON) is kept hex-encoded; the
// cgroup id is not stored, the snapshot's builder resolves it.
type agentRecord struct {
	V int `json:"v"`
	policy.Agent
	TokenHashHex string    `json:"token_hash,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	CreatedBy    string    `json:"created_by,omitempty"`
}

func decodeAgent(k, v []byte) (AgentRecord, error) {
	var rec agentRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return AgentRecord{}, fmt.Errorf("decode agent %q: %w", k, err)
	}
	if rec.TokenHashHex != "" {
		h, err := hex.DecodeString(rec.TokenHashHex)
		if err != nil || len(h) != 32 {
			return AgentRecord{}, fmt.Errorf("decode agent %q: bad token hash", k)
		}
		copy(rec.Agent.TokenHash[:], h)
	}
	rec.Agent.Name = string(k)
	return AgentRecord{Agent: rec.Agent, CreatedAt: rec.CreatedAt, CreatedBy: rec.CreatedBy}, nil
}

func encodeAgent(a AgentRecord) ([]byte, error) {
	rec := agentRecord{V: 1, Agent: a.Agent, CreatedAt: a.CreatedAt, CreatedBy: a.CreatedBy}
	rec.Agent.CgroupID = 0
	if a.TokenHash != ([32]byte{}) {
		rec.TokenHashHex = hex.EncodeToString(a.TokenHash[:])
	}
	return json.Marshal(rec)
}

func validateAgent(a *policy.Agent) error {
	if err := policy.ValidName("agent", a.Name); err != nil {
		return invalid(err)
	}
	if err := policy.ValidName("vault", a.Vault); err != nil {
		return invalid(err)
	}
	for i, p := range a.Sources {
		if !p.IsValid() {
			return fmt.Errorf("%w sources: entry %d is not a valid CIDR prefix", ErrInvalid, i)
		}
		a.Sources[i] = p.Masked()
	}
	if a.Cgroup != "" {
		c := strings.Trim(a.Cgroup, "/")
		if c == "" || strings.ContainsAny(c, "\x00\n") || slices.Contains(strings.Split(c, "/"), "..") || slices.Contains(strings.Split(c, "/"), ".") {
			return fmt.Errorf("%w cgroup: %q must be a path below the cgroup2 mount without '.' or '..'", ErrInvalid, a.Cgroup)
		}
		a.Cgroup = c
	}
	return nil
}

// CreateAgent stores an agent (names are unique across vaults: ErrExists).
// The caller generated the token and passes only its hash. Audited as
// agent.create.
func (s *Store) CreateAgent(actor audit.Actor, a policy.Agent) (AgentRecord, error) {
	a.Sources = slices.Clone(a.Sources)
	if err := validateAgent(&a); err != nil {
		return AgentRecord{}, fmt.Errorf("create agent: %w", err)
	}
	a.Revoked = false
	a.CgroupID = 0
	if !a.ExpiresAt.IsZero() {
		a.ExpiresAt = a.ExpiresAt.UTC()
	}
	now := s.now().UTC()
	rec := AgentRecord{Agent: a, CreatedAt: now, CreatedBy: actor.Name}
	raw, err := encodeAgent(rec)
	if err != nil {
		return AgentRecord{}, fmt.Errorf("create agent: %w", err)
	}
	m := &mutation{policy: true, event: audit.Event{Time: now, Actor: actor, Action: "agent.create", Vault: a.Vault, Target: a.Name}}
	err = s.update(m, func(tx *bolt.Tx) error {
		if bucket(tx, bucketVaults).Get([]byte(a.Vault)) == nil {
			return vaultMissing(a.Vault)
		}
		b := bucket(tx, bucketAgents)
		if old := b.Get([]byte(a.Name)); old != nil {
			return fmt.Errorf("agent %q: %w (agent names are unique across vaults)", a.Name, ErrExists)
		}
		if a.TokenHash != ([32]byte{}) {
			want := hex.EncodeToString(a.TokenHash[:])
			err := b.ForEach(func(k, v []byte) error {
				var other agentRecord
				if json.Unmarshal(v, &other) == nil && other.TokenHashHex == want {
					return fmt.Errorf("agent token: %w (held by another agent)", ErrExists)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return b.Put([]byte(a.Name), raw)
	})
	if err != nil {
		return AgentRecord{}, fmt.Errorf("create agent: %w", err)
	}
	return rec, nil
}

// Agents lists agents of a vault, or all agents when vault is "", by name.
func (s *Store) Agents(vault string) ([]AgentRecord, error) {
	var out []AgentRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		if vault != "" && bucket(tx, bucketVaults).Get([]byte(vault)) == nil {
			return vaultMissing(vault)
		}
		return bucket(tx, bucketAgents).ForEach(func(k, v []byte) error {
			rec, err := decodeAgent(k, v)
			if err != nil {
				return err
			}
			if vault == "" || rec.Vault == vault {
				out = append(out, rec)
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	return out, nil
}

// RevokeAgent marks an agent revoked, audited as agent.revoke. Revoking a
// revoked agent succeeds and is audited again.
func (s *Store) RevokeAgent(actor audit.Actor, name string) error {
	m := &mutation{policy: true, event: audit.Event{Actor: actor, Action: "agent.revoke", Target: name}}
	err := s.update(m, func(tx *bolt.Tx) error {
		b := bucket(tx, bucketAgents)
		v := b.Get([]byte(name))
		if v == nil {
			return fmt.Errorf("agent %q: %w", name, ErrNotFound)
		}
		rec, err := decodeAgent([]byte(name), v)
		if err != nil {
			return err
		}
		m.event.Vault = rec.Vault
		rec.Revoked = true
		raw, err := encodeAgent(rec)
		if err != nil {
			return err
		}
		return b.Put([]byte(name), raw)
	})
	if err != nil {
		return fmt.Errorf("revoke agent: %w", err)
	}
	return nil
}

// DeleteAgent deletes an agent, audited as agent.delete.
func (s *Store) DeleteAgent(actor audit.Actor, name string) error {
	m := &mutation{policy: true, event: audit.Event{Actor: actor, Action: "agent.delete", Target: name}}
	err := s.update(m, func(tx *bolt.Tx) error {
		b := bucket(tx, bucketAgents)
		v := b.Get([]byte(name))
		if v == nil {
			return fmt.Errorf("agent %q: %w", name, ErrNotFound)
		}
		if rec, err := decodeAgent([]byte(name), v); err == nil {
			m.event.Vault = rec.Vault
		}
		return b.Delete([]byte(name))
	})
	if err != nil {
		return fmt.Errorf("delete agent: %w", err)
	}
	return nil
}

// SnapshotInput reads vaults, services and agents, in one read transaction,
// as the input of a policy snapshot.
func (s *Store) SnapshotInput() (policy.Input, error) {
	var in policy.Input
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := bucket(tx, bucketMeta).Get(metaPolicyVersion); len(v) == 8 {
			in.Version = binary.BigEndian.Uint64(v)
		}
		err := bucket(tx, bucketVaults).ForEach(func(k, _ []byte) error {
			in.Vaults = append(in.Vaults, string(k))
			return nil
		})
		if err != nil {
			return err
		}
		err = bucket(tx, bucketServices).ForEach(func(k, v []byte) error {
			svc, err := decodeService(k, v)
			if err != nil {
				return err
			}
			in.Services = append(in.Services, svc)
			return nil
		})
		if err != nil {
			return err
		}
		return bucket(tx, bucketAgents).ForEach(func(k, v []byte) error {
			rec, err := decodeAgent(k, v)
			if err != nil {
				return err
			}
			in.Agents = append(in.Agents, rec.Agent)
			return nil
		})
	})
	if err != nil {
		return policy.Input{}, fmt.Errorf("build policy snapshot: %w", err)
	}
	return in, nil
}

// Snapshot reads vaults, services and agents into an immutable policy
// snapshot (agent CgroupID is left for the caller to resolve: use
// SnapshotInput, adjust, then policy.NewSnapshot).
func (s *Store) Snapshot() (*policy.Snapshot, error) {
	in, err := s.SnapshotInput()
	if err != nil {
		return nil, err
	}
	return policy.NewSnapshot(in), nil
}
