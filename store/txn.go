package store

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
)

// updateEvents runs fn in one Update transaction and appends the audit
// events it returns to the chain in the same transaction, so a change and
// its rows commit together or not at all (like update, for changes that
// make several rows or none). With policyChange, the policy version is
// bumped and policyChanged runs after the commit.
func (s *Store) updateEvents(policyChange bool, fn func(tx *bolt.Tx) ([]audit.Event, error)) error {
	appended := false
	err := s.writeTx(func(tx *bolt.Tx) error {
		evs, err := fn(tx)
		if err != nil {
			return err
		}
		if policyChange {
			if err := bumpPolicyVersion(tx); err != nil {
				return err
			}
		}
		for i := range evs {
			if err := s.appendTx(tx, &evs[i]); err != nil {
				return err
			}
		}
		appended = len(evs) > 0
		return nil
	})
	if err != nil {
		return err
	}
	if policyChange {
		s.policyChanged()
	}
	if appended {
		s.audited.poke()
	}
	return nil
}

func bumpPolicyVersion(tx *bolt.Tx) error {
	meta := bucket(tx, bucketMeta)
	var n uint64
	if v := meta.Get(metaPolicyVersion); len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	if err := meta.Put(metaPolicyVersion, be64(n+1)); err != nil {
		return fmt.Errorf("bump policy version: %w", err)
	}
	return nil
}
