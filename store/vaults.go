package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

// vaultRecord is vaults/<name>.
type vaultRecord struct {
	V         int       `json:"v"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by"`
}

// invalid wraps a *policy.ValidationError so that errors.Is(err, ErrInvalid)
// and errors.As(err, **policy.ValidationError) both hold.
func invalid(err error) error { return fmt.Errorf("%w %w", ErrInvalid, err) }

func vaultMissing(name string) error {
	return fmt.Errorf("vault %q: %w (create it first)", name, ErrNotFound)
}

// CreateVault creates a vault (ErrExists), audited as vault.create by actor.
func (s *Store) CreateVault(actor audit.Actor, name string) (Vault, error) {
	if err := policy.ValidName("vault", name); err != nil {
		return Vault{}, fmt.Errorf("create vault: %w", invalid(err))
	}
	now := s.now().UTC()
	rec := vaultRecord{V: 1, CreatedAt: now, CreatedBy: actor.Name}
	raw, err := json.Marshal(rec)
	if err != nil {
		return Vault{}, fmt.Errorf("create vault: %w", err)
	}
	m := &mutation{policy: true, event: audit.Event{Time: now, Actor: actor, Action: "vault.create", Vault: name, Target: name}}
	err = s.update(m, func(tx *bolt.Tx) error {
		b := bucket(tx, bucketVaults)
		if b.Get([]byte(name)) != nil {
			return fmt.Errorf("vault %q: %w", name, ErrExists)
		}
		return b.Put([]byte(name), raw)
	})
	if err != nil {
		return Vault{}, fmt.Errorf("create vault: %w", err)
	}
	return Vault{Name: name, CreatedAt: now, CreatedBy: actor.Name}, nil
}

// Vaults lists vaults by name.
func (s *Store) Vaults() ([]Vault, error) {
	var out []Vault
	err := s.db.View(func(tx *bolt.Tx) error {
		return bucket(tx, bucketVaults).ForEach(func(k, v []byte) error {
			var rec vaultRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode vault %q: %w", k, err)
			}
			out = append(out, Vault{Name: string(k), CreatedAt: rec.CreatedAt, CreatedBy: rec.CreatedBy})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list vaults: %w", err)
	}
	return out, nil
}

// DeleteVault deletes a vault with its credentials, services and agents.
func (s *Store) DeleteVault(actor audit.Actor, name string) error {
	s.credMu.Lock()
	defer s.credMu.Unlock()
	m := &mutation{policy: true, event: audit.Event{Actor: actor, Action: "vault.delete", Vault: name, Target: name}}
	err := s.update(m, func(tx *bolt.Tx) error {
		vb := bucket(tx, bucketVaults)
		if vb.Get([]byte(name)) == nil {
			return vaultMissing(name)
		}
		if err := vb.Delete([]byte(name)); err != nil {
			return err
		}
		s.editSecretsOnCommit(tx, func(k secretKey) bool { return k.vault == name }, secretKey{}, nil)
		for _, bn := range []string{bucketCredentials, bucketServices} {
			if err := deletePrefix(bucket(tx, bn), vaultPrefix(name)); err != nil {
				return fmt.Errorf("delete %s of vault %q: %w", bn, name, err)
			}
		}
		ab := bucket(tx, bucketAgents)
		var dead [][]byte
		err := ab.ForEach(func(k, v []byte) error {
			var rec agentRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode agent %q: %w", k, err)
			}
			if rec.Vault == name {
				dead = append(dead, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range dead {
			if err := ab.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete vault: %w", err)
	}
	return nil
}

// deletePrefix deletes every key of b starting with prefix.
func deletePrefix(b *bolt.Bucket, prefix []byte) error {
	var dead [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		dead = append(dead, bytes.Clone(k))
	}
	for _, k := range dead {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// splitPairKey splits vault 0x00 name.
func splitPairKey(k []byte) (vault, name string, ok bool) {
	i := bytes.IndexByte(k, 0)
	if i <= 0 || i == len(k)-1 {
		return "", "", false
	}
	return string(k[:i]), string(k[i+1:]), true
}
