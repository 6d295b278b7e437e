package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
)

// The audit bucket holds rows keyed by their 8-byte big-endian Seq, each
// the canonical JSON audit.Seal returned. Rows are sealed by one chain head
// and reach the bucket through the journal (journal.go): data-path events
// through Append and the folder's group commits, store mutations in the
// same transaction as their change.

type writerStats struct {
	events  atomic.Uint64
	batches atomic.Uint64
}

// WriterStats counts the audit log's commits since Open.
type WriterStats struct {
	Events  uint64 // rows committed to bbolt
	Batches uint64 // write transactions that committed them
}

// AuditWriterStats reports how many rows were committed in how many
// transactions (fewer transactions than rows means group commit works).
func (s *Store) AuditWriterStats() WriterStats {
	return WriterStats{Events: s.stats.events.Load(), Batches: s.stats.batches.Load()}
}

// lastHash returns the hash of the chain's last row; for an empty log the
// anchor a retention cut left behind ("" for a log never pruned).
func lastHash(b *bolt.Bucket) (string, error) {
	k, v := b.Cursor().Last()
	if k == nil {
		a, err := readAnchor(b.Tx())
		return a.Hash, err
	}
	var tail struct {
		Hash string `json:"hash"`
	}
	if err := json.Unmarshal(v, &tail); err != nil || tail.Hash == "" {
		return "", fmt.Errorf("read audit row %d: the chain's last row is unreadable; run audit verify", binary.BigEndian.Uint64(k))
	}
	return tail.Hash, nil
}

// AuditList returns rows matching q, newest first, and the cursor for the
// next page (0 when there is none). Since is inclusive, Until exclusive;
// Agent and User match the actor's kind and name.
func (s *Store) AuditList(q AuditQuery) (rows []audit.Event, next uint64, err error) {
	limit := q.Limit
	if limit <= 0 {
		limit = 100
	}
	if limit > 1000 {
		limit = 1000
	}
	s.syncAudit(true)
	err = s.db.View(func(tx *bolt.Tx) error {
		c := bucket(tx, bucketAudit).Cursor()
		var k, v []byte
		if q.Cursor > 0 {
			k, v = c.Seek(be64(q.Cursor))
			if k != nil {
				k, v = c.Prev() // Seek lands on Cursor itself or the row after it
			} else {
				k, v = c.Last()
			}
		} else {
			k, v = c.Last()
		}
		for ; k != nil; k, v = c.Prev() {
			var ev audit.Event
			if err := json.Unmarshal(v, &ev); err != nil {
				return fmt.Errorf("decode audit row %d: %w", binary.BigEndian.Uint64(k), err)
			}
			if !q.matches(&ev) {
				continue
			}
			if len(rows) == limit {
				next = rows[len(rows)-1].Seq
				return nil
			}
			rows = append(rows, ev)
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list audit rows: %w", err)
	}
	return rows, next, nil
}

func (q *AuditQuery) matches(ev *audit.Event) bool {
	switch {
	case q.Vault != "" && ev.Vault != q.Vault,
		q.Agent != "" && (ev.Actor.Kind != audit.ActorAgent || ev.Actor.Name != q.Agent),
		q.User != "" && (ev.Actor.Kind != audit.ActorUser || ev.Actor.Name != q.User),
		q.Action != "" && ev.Action != q.Action,
		q.Decision != "" && ev.Decision != q.Decision,
		!q.Since.IsZero() && ev.Time.Before(q.Since),
		!q.Until.IsZero() && !ev.Time.Before(q.Until):
		return false
	}
	return true
}

// AuditVerify checks the whole hash chain and returns the number of rows
// checked, or an *audit.BrokenError naming the first bad row. A log cut by
// PruneAudit verifies from the anchor the cut stored: the first row left
// must follow the last row removed.
func (s *Store) AuditVerify() (rows uint64, err error) {
	var ver *audit.Verifier
	misplaced := false
	s.syncAudit(true)
	err = s.db.View(func(tx *bolt.Tx) error {
		anchor, err := readAnchor(tx)
		if err != nil {
			return err
		}
		ver = audit.NewVerifier(anchor.Hash)
		c := bucket(tx, bucketAudit).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			want := anchor.Seq + ver.Rows + 1
			if ver.Rows == 0 {
				var head struct {
					Seq uint64 `json:"seq"`
				}
				if json.Unmarshal(v, &head) == nil && head.Seq != want {
					misplaced = true
					return &audit.BrokenError{Seq: head.Seq, Reason: fmt.Sprintf("expected row %d first (rows were removed without a retention cut, or the anchor was altered)", want)}
				}
			}
			if err := ver.Next(v); err != nil {
				return err
			}
			if len(k) != 8 || binary.BigEndian.Uint64(k) != want {
				misplaced = true
				return &audit.BrokenError{Seq: want, Reason: "row is stored out of place (rows were removed, moved or added)"}
			}
		}
		return nil
	})
	if ver == nil {
		return 0, err
	}
	if misplaced && ver.Rows > 0 {
		return ver.Rows - 1, err
	}
	return ver.Rows, err
}
