package store

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
)

// Retention: PruneAudit deletes the oldest rows and stores in meta the seq
// and hash of the last row it removed (the anchor). The rows left still
// form a chain: the first one carries the anchor's hash as its prev_hash,
// so AuditVerify starts its Verifier from the anchor, and an emptied log
// continues from it (lastHash).

var metaAuditAnchor = []byte("audit_anchor")

// auditAnchor is meta/audit_anchor.
type auditAnchor struct {
	Seq  uint64 `json:"seq"`  // the last removed row
	Hash string `json:"hash"` // its hash
}

func readAnchor(tx *bolt.Tx) (auditAnchor, error) {
	var a auditAnchor
	m := tx.Bucket([]byte(bucketMeta))
	if m == nil {
		return a, nil
	}
	raw := m.Get(metaAuditAnchor)
	if raw == nil {
		return a, nil
	}
	if err := json.Unmarshal(raw, &a); err != nil || a.Hash == "" {
		return a, fmt.Errorf("read audit anchor: the retention anchor in meta is unreadable; run audit verify")
	}
	return a, nil
}

// pruneChunk bounds the rows one prune transaction deletes, so the audit
// writer is never held up for long.
const pruneChunk = 5000

// PruneAudit deletes the oldest audit rows whose time is before `before`
// (stopping at the first row that is not), keeps the chain verifiable by
// storing the hash of the last removed row as the anchor, and records an
// audit.prune row. It returns how many rows it removed; nothing removed
// writes no row. Safe while the data path appends.
func (s *Store) PruneAudit(before time.Time) (removed int, err error) {
	var first, last uint64
	s.syncAudit(true)
	for {
		n := 0
		done := false
		err := s.db.Update(func(tx *bolt.Tx) error {
			b := bucket(tx, bucketAudit)
			c := b.Cursor()
			var lastRow auditAnchor
			var dead [][]byte
			for k, v := c.First(); k != nil && len(dead) < pruneChunk; k, v = c.Next() {
				var row struct {
					Seq  uint64    `json:"seq"`
					Time time.Time `json:"time"`
					Hash string    `json:"hash"`
				}
				if err := json.Unmarshal(v, &row); err != nil || row.Hash == "" {
					return fmt.Errorf("read audit row %d: unreadable; run audit verify before pruning", binary.BigEndian.Uint64(k))
				}
				if !row.Time.Before(before) {
					done = true
					break
				}
				dead = append(dead, append([]byte(nil), k...))
				lastRow = auditAnchor{Seq: binary.BigEndian.Uint64(k), Hash: row.Hash}
			}
			if len(dead) < pruneChunk {
				done = true
			}
			if len(dead) == 0 {
				return nil
			}
			for _, k := range dead {
				if err := b.Delete(k); err != nil {
					return fmt.Errorf("delete audit row: %w", err)
				}
			}
			raw, err := json.Marshal(lastRow)
			if err != nil {
				return err
			}
			if err := bucket(tx, bucketMeta).Put(metaAuditAnchor, raw); err != nil {
				return fmt.Errorf("store audit anchor: %w", err)
			}
			if first == 0 {
				first = binary.BigEndian.Uint64(dead[0])
			}
			last = lastRow.Seq
			n = len(dead)
			return nil
		})
		if err != nil {
			return removed, fmt.Errorf("prune audit log: %w", err)
		}
		removed += n
		if done || n == 0 {
			break
		}
	}
	if removed == 0 {
		return 0, nil
	}
	ev := audit.Event{Actor: audit.System, Action: "audit.prune",
		Target: fmt.Sprintf("%d rows (seq %d to %d) older than %s", removed, first, last, before.UTC().Format(time.RFC3339))}
	if err := s.updateEvents(false, func(*bolt.Tx) ([]audit.Event, error) { return []audit.Event{ev}, nil }); err != nil {
		return removed, fmt.Errorf("prune audit log: record the prune: %w", err)
	}
	return removed, nil
}

// AuditLastSeq returns the seq of the newest audit row (0 for none).
func (s *Store) AuditLastSeq() (uint64, error) {
	var seq uint64
	s.syncAudit(true)
	err := s.db.View(func(tx *bolt.Tx) error {
		if k, _ := bucket(tx, bucketAudit).Cursor().Last(); k != nil {
			seq = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read audit log: %w", err)
	}
	return seq, nil
}

// AuditAfter returns rows with Seq > after that match q (q.Cursor is
// ignored), oldest first, at most q.Limit (default 100, at most 1000), and
// the seq of the last row it looked at, which the next call passes as
// after (it moves on even when no row matched). Live tails and exports page
// through the log with it.
func (s *Store) AuditAfter(after uint64, q AuditQuery) (rows []audit.Event, last uint64, err error) {
	limit := q.Limit
	if limit <= 0 {
		limit = 100
	}
	if limit > 1000 {
		limit = 1000
	}
	last = after
	const maxScan = 20000 // rows looked at per call, matching or not
	// polled after every commit: wait for the window, do not end it
	s.syncAudit(false)
	err = s.db.View(func(tx *bolt.Tx) error {
		c := bucket(tx, bucketAudit).Cursor()
		scanned := 0
		for k, v := c.Seek(be64(after + 1)); k != nil && len(rows) < limit && scanned < maxScan; k, v = c.Next() {
			scanned++
			var ev audit.Event
			if err := json.Unmarshal(v, &ev); err != nil {
				return fmt.Errorf("decode audit row %d: %w", binary.BigEndian.Uint64(k), err)
			}
			last = binary.BigEndian.Uint64(k)
			if q.matches(&ev) {
				rows = append(rows, ev)
			}
		}
		return nil
	})
	if err != nil {
		return nil, after, fmt.Errorf("read audit log: %w", err)
	}
	return rows, last, nil
}
