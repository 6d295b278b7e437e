package store

import (
	"encoding/json"
	"fmt"
	"maps"

	bolt "go.etcd.io/bbolt"
)

// The data path calls Secret on every brokered request, so values are kept
// decrypted in memory in an immutable map behind an atomic pointer: a lookup
// takes no lock, reads no disk, decrypts nothing and allocates nothing.
// Credential writes build a new map after their transaction commits
// (copy-on-write), under credMu so maps are published in commit order.

type secretKey struct{ vault, key string }

type secretMap struct {
	m map[secretKey][]byte
}

// Secret returns a credential's value from the in-memory decrypted cache
// (kept current by every credential write; no disk read, no decryption).
// The returned slice must not be modified.
func (s *Store) Secret(vault, key string) ([]byte, bool) {
	sm := s.secrets.Load()
	if sm == nil {
		return nil, false
	}
	v, ok := sm.m[secretKey{vault, key}]
	return v, ok
}

// undecryptableSet holds the credentials ("vault/key") whose stored
// ciphertext did not authenticate when the store was opened: the record was
// altered or moved. They are left out of the cache, so the data path denies
// them; Credentials marks them; setting one again repairs it.
func (s *Store) undecryptableSet() map[string]bool {
	s.undecryptMu.Lock()
	defer s.undecryptMu.Unlock()
	set := make(map[string]bool, len(s.undecryptable))
	for _, n := range s.undecryptable {
		set[n] = true
	}
	return set
}

// loadSecrets decrypts every credential into a new cache.
func (s *Store) loadSecrets() error {
	m := map[secretKey][]byte{}
	var bad []string
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if tx.Bucket([]byte(name)) == nil {
				return fmt.Errorf("%w: bucket %s is missing", errNotAStore, name)
			}
		}
		return bucket(tx, bucketCredentials).ForEach(func(k, v []byte) error {
			vault, key, ok := splitPairKey(k)
			if !ok {
				bad = append(bad, fmt.Sprintf("%q", k))
				return nil
			}
			var rec credentialRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				bad = append(bad, vault+"/"+key)
				return nil
			}
			pt, err := s.aead.open(bucketCredentials, k, rec.Ciphertext)
			if err != nil {
				bad = append(bad, vault+"/"+key)
				return nil
			}
			m[secretKey{vault, key}] = pt
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("load credentials: %w", err)
	}
	for _, name := range bad {
		s.log.Error("credential does not decrypt: it was altered or moved; set it again", "credential", name)
	}
	s.undecryptMu.Lock()
	s.undecryptable = bad
	s.undecryptMu.Unlock()
	s.secrets.Store(&secretMap{m: m})
	return nil
}

// publishSecretOnCommit sets (value nil: removes) vault/key in the cache
// when tx commits: before the mutating method runs the policy hook, so a
// snapshot that names the credential never meets a cache without its
// value, and a deleted value is gone before anyone is told. Callers hold
// credMu.
func (s *Store) publishSecretOnCommit(tx *bolt.Tx, vault, key string, value []byte) {
	s.editSecretsOnCommit(tx, func(m map[secretKey][]byte) {
		if value == nil {
			delete(m, secretKey{vault, key})
		} else {
			m[secretKey{vault, key}] = value
		}
	}, func(n string) bool { return n == vault+"/"+key })
}

// editSecretsOnCommit changes the cache with edit, and drops the
// undecryptable names forget matches, when tx commits (see
// publishSecretOnCommit). Callers hold credMu.
func (s *Store) editSecretsOnCommit(tx *bolt.Tx, edit func(m map[secretKey][]byte), forget func(name string) bool) {
	tx.OnCommit(func() {
		s.editSecrets(edit)
		s.forgetUndecryptable(forget)
	})
}

// editSecrets publishes a copy of the cache changed by fn. Callers hold credMu.
func (s *Store) editSecrets(fn func(m map[secretKey][]byte)) {
	old := s.secrets.Load()
	var m map[secretKey][]byte
	if old != nil {
		m = maps.Clone(old.m)
	}
	if m == nil {
		m = map[secretKey][]byte{}
	}
	fn(m)
	s.secrets.Store(&secretMap{m: m})
}

// forgetUndecryptable drops a repaired or deleted credential from the list.
func (s *Store) forgetUndecryptable(match func(name string) bool) {
	s.undecryptMu.Lock()
	defer s.undecryptMu.Unlock()
	out := s.undecryptable[:0]
	for _, n := range s.undecryptable {
		if !match(n) {
			out = append(out, n)
		}
	}
	s.undecryptable = out
}
