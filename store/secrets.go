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

// isUndecryptable says whether vault/key's stored ciphertext did not
// authenticate when the store was opened: the record was altered or moved.
// Such credentials are left out of the cache, so the data path denies them;
// Credentials marks them; setting one again repairs it.
func (s *Store) isUndecryptable(vault, key string) bool {
	s.undecryptMu.Lock()
	defer s.undecryptMu.Unlock()
	_, bad := s.undecryptable[secretKey{vault, key}]
	return bad
}

// loadSecrets decrypts every credential into a new cache.
func (s *Store) loadSecrets() error {
	m := map[secretKey][]byte{}
	bad := map[secretKey]struct{}{}
	var badNames []string // for the log, unparsable keys included
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if tx.Bucket([]byte(name)) == nil {
				return fmt.Errorf("%w: bucket %s is missing", errNotAStore, name)
			}
		}
		return bucket(tx, bucketCredentials).ForEach(func(k, v []byte) error {
			vault, key, ok := splitPairKey(k)
			if !ok {
				badNames = append(badNames, fmt.Sprintf("%q", k))
				return nil
			}
			var rec credentialRecord
			var pt []byte
			err := json.Unmarshal(v, &rec)
			if err == nil {
				pt, err = s.aead.open(bucketCredentials, k, rec.Ciphertext)
			}
			if err != nil {
				bad[secretKey{vault, key}] = struct{}{}
				badNames = append(badNames, vault+"/"+key)
				return nil
			}
			m[secretKey{vault, key}] = pt
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("load credentials: %w", err)
	}
	for _, name := range badNames {
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
	k := secretKey{vault, key}
	s.editSecretsOnCommit(tx, func(c secretKey) bool { return c == k }, k, value)
}

// editSecretsOnCommit, when tx commits (see publishSecretOnCommit), drops
// every credential drop matches from the cache and from the undecryptable
// set (deleted, or set again and so repaired), then caches value under set
// unless value is nil. Callers hold credMu.
func (s *Store) editSecretsOnCommit(tx *bolt.Tx, drop func(secretKey) bool, set secretKey, value []byte) {
	tx.OnCommit(func() {
		m := map[secretKey][]byte{}
		if old := s.secrets.Load(); old != nil && old.m != nil {
			m = maps.Clone(old.m)
		}
		maps.DeleteFunc(m, func(k secretKey, _ []byte) bool { return drop(k) })
		if value != nil {
			m[set] = value
		}
		s.secrets.Store(&secretMap{m: m})
		s.undecryptMu.Lock()
		maps.DeleteFunc(s.undecryptable, func(k secretKey, _ struct{}) bool { return drop(k) })
		s.undecryptMu.Unlock()
	})
}
