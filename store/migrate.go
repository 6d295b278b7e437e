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

// Schema history:
//
//	1: the first layout. No proposals bucket; services/<vault 0x00 name>
//	   held the bare policy.Service JSON, without a "v" field or creation
//	   data.
//	2: adds the proposals bucket; service values become serviceRecord
//	   ({"v":2, the service's fields, "created_at", "created_by"}).
//
// A migration upgrades a file from version `from` to from+1 inside the
// transaction it is given. Open runs every needed migration, in order, in
// one Update transaction, after the data key is unlocked: a file is either
// fully migrated or left as it was.
type migration struct {
	from int
	name string
	fn   func(tx *bolt.Tx, now time.Time) error
}

var migrations = []migration{
	{from: 1, name: "proposals bucket; versioned service records", fn: migrate1to2},
}

// migrate brings a file at schema `from` up to SchemaVersion and records it
// in the audit chain.
func (s *Store) migrate(from uint64) error {
	now := s.now().UTC()
	return s.writeTx(func(tx *bolt.Tx) error {
		for _, m := range migrations {
			if uint64(m.from) < from {
				continue
			}
			if err := m.fn(tx, now); err != nil {
				return fmt.Errorf("schema %d to %d (%s): %w", m.from, m.from+1, m.name, err)
			}
			meta := tx.Bucket([]byte(bucketMeta))
			if err := meta.Put(metaSchema, be64(uint64(m.from+1))); err != nil {
				return err
			}
			if tx.Bucket([]byte(bucketAudit)) != nil {
				ev := audit.Event{Time: now, Actor: audit.System, Action: "store.migrate", Target: fmt.Sprintf("schema %d to %d", m.from, m.from+1)}
				if err := s.appendTx(tx, &ev); err != nil {
					return err
				}
			}
		}
		meta := tx.Bucket([]byte(bucketMeta))
		if v := meta.Get(metaSchema); !bytes.Equal(v, be64(SchemaVersion)) {
			return fmt.Errorf("no migration path from schema %d", from)
		}
		return nil
	})
}

func migrate1to2(tx *bolt.Tx, now time.Time) error {
	if _, err := tx.CreateBucketIfNotExists([]byte(bucketProposals)); err != nil {
		return fmt.Errorf("create proposals bucket: %w", err)
	}
	if _, err := tx.CreateBucketIfNotExists([]byte(bucketAudit)); err != nil {
		return fmt.Errorf("create audit bucket: %w", err)
	}
	b := tx.Bucket([]byte(bucketServices))
	if b == nil {
		return fmt.Errorf("%w: services bucket is missing", errNotAStore)
	}
	type kv struct{ k, v []byte }
	var rewrites []kv
	err := b.ForEach(func(k, v []byte) error {
		var probe struct {
			V *int `json:"v"`
		}
		if err := json.Unmarshal(v, &probe); err != nil {
			return fmt.Errorf("decode v1 service %q: %w", bytes.ReplaceAll(k, []byte{0}, []byte{'/'}), err)
		}
		if probe.V != nil {
			return nil // already a versioned record
		}
		var svc policy.Service
		if err := json.Unmarshal(v, &svc); err != nil {
			return fmt.Errorf("decode v1 service %q: %w", bytes.ReplaceAll(k, []byte{0}, []byte{'/'}), err)
		}
		raw, err := json.Marshal(serviceRecord{V: serviceRecordVersion, Service: svc, CreatedAt: now})
		if err != nil {
			return err
		}
		rewrites = append(rewrites, kv{bytes.Clone(k), raw})
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range rewrites {
		if err := b.Put(r.k, r.v); err != nil {
			return fmt.Errorf("rewrite service: %w", err)
		}
	}
	return nil
}
