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

// MaxSecretLen bounds a credential value.
const MaxSecretLen = 64 << 10

// credentialRecord is credentials/<vault 0x00 key>. Ciphertext is
// nonce || AES-256-GCM(DEK, value) with associated data
// "credentials" 0x00 <record key>.
type credentialRecord struct {
	V          int       `json:"v"`
	CreatedAt  time.Time `json:"created_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	UpdatedBy  string    `json:"updated_by"`
	Ciphertext []byte    `json:"ct"`
}

// SetCredential creates or replaces a credential's value (encrypted with the
// record's bucket and key as associated data), audited as credential.set.
// The vault must exist. Errors never contain the value.
func (s *Store) SetCredential(actor audit.Actor, vault, key string, value []byte) (Credential, error) {
	if err := policy.ValidName("credential", key); err != nil {
		return Credential{}, fmt.Errorf("set credential: %w", invalid(err))
	}
	if len(value) == 0 {
		return Credential{}, fmt.Errorf("set credential %s/%s: %w value: must not be empty", vault, key, ErrInvalid)
	}
	if len(value) > MaxSecretLen {
		return Credential{}, fmt.Errorf("set credential %s/%s: %w value: %d bytes is too long (at most %d)", vault, key, ErrInvalid, len(value), MaxSecretLen)
	}
	value = bytes.Clone(value) // the cache keeps it; the caller may reuse theirs
	rk := pairKey(vault, key)
	ct, err := s.aead.seal(bucketCredentials, rk, value)
	if err != nil {
		return Credential{}, fmt.Errorf("set credential %s/%s: %w", vault, key, err)
	}
	now := s.now().UTC()
	cred := Credential{Vault: vault, Key: key, CreatedAt: now, UpdatedAt: now, UpdatedBy: actor.Name}

	s.credMu.Lock()
	defer s.credMu.Unlock()
	m := &mutation{policy: true, event: audit.Event{Time: now, Actor: actor, Action: "credential.set", Vault: vault, Target: key, Credential: key}}
	err = s.update(m, func(tx *bolt.Tx) error {
		if bucket(tx, bucketVaults).Get([]byte(vault)) == nil {
			return vaultMissing(vault)
		}
		b := bucket(tx, bucketCredentials)
		if old := b.Get(rk); old != nil {
			var prev credentialRecord
			if json.Unmarshal(old, &prev) == nil && !prev.CreatedAt.IsZero() {
				cred.CreatedAt = prev.CreatedAt
			}
		}
		raw, err := json.Marshal(credentialRecord{V: 1, CreatedAt: cred.CreatedAt, UpdatedAt: now, UpdatedBy: actor.Name, Ciphertext: ct})
		if err != nil {
			return err
		}
		s.publishSecretOnCommit(tx, vault, key, value)
		return b.Put(rk, raw)
	})
	if err != nil {
		return Credential{}, fmt.Errorf("set credential %s/%s: %w", vault, key, err)
	}
	return cred, nil
}

// Credentials lists a vault's credentials (names and times only), by key,
// marking the ones that did not decrypt at open.
func (s *Store) Credentials(vault string) ([]Credential, error) {
	var out []Credential
	err := s.db.View(func(tx *bolt.Tx) error {
		if bucket(tx, bucketVaults).Get([]byte(vault)) == nil {
			return vaultMissing(vault)
		}
		prefix := vaultPrefix(vault)
		c := bucket(tx, bucketCredentials).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			key := string(k[len(prefix):])
			var rec credentialRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				// an altered record is listed as one to set again, not
				// an error that hides the whole vault's list
				out = append(out, Credential{Vault: vault, Key: key, Undecryptable: true})
				continue
			}
			out = append(out, Credential{Vault: vault, Key: key, CreatedAt: rec.CreatedAt, UpdatedAt: rec.UpdatedAt, UpdatedBy: rec.UpdatedBy,
				Undecryptable: s.isUndecryptable(vault, key)})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list credentials: %w", err)
	}
	return out, nil
}

// DeleteCredential deletes a credential, audited as credential.delete. A
// service naming it stays; the data path then denies its requests.
func (s *Store) DeleteCredential(actor audit.Actor, vault, key string) error {
	rk := pairKey(vault, key)
	s.credMu.Lock()
	defer s.credMu.Unlock()
	m := &mutation{policy: true, event: audit.Event{Actor: actor, Action: "credential.delete", Vault: vault, Target: key, Credential: key}}
	err := s.update(m, func(tx *bolt.Tx) error {
		if bucket(tx, bucketVaults).Get([]byte(vault)) == nil {
			return vaultMissing(vault)
		}
		b := bucket(tx, bucketCredentials)
		if b.Get(rk) == nil {
			return fmt.Errorf("credential %q in vault %q: %w", key, vault, ErrNotFound)
		}
		s.publishSecretOnCommit(tx, vault, key, nil)
		return b.Delete(rk)
	})
	if err != nil {
		return fmt.Errorf("delete credential: %w", err)
	}
	return nil
}
