package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/agentvault/agent-vault/audit"
)

// The audit bucket holds rows keyed by their 8-byte big-endian Seq (from
// the bucket's NextSequence), each the canonical JSON audit.Seal returned.
// Rows are written on two paths: the group-commit writer below (data-path
// events through Append) and store mutations, which append their row in the
// same Update transaction as the change. bbolt runs one Update at a time and
// each appender reads the chain's tail with cursor.Last inside its
// transaction, so both paths extend one chain.

const (
	queueLen = 4096 // pending Append calls before callers wait to enqueue
	maxBatch = 1024 // events committed in one transaction at most
)

type appendReq struct {
	ev   audit.Event
	done chan appendRes
}

type appendRes struct {
	ev  audit.Event
	err error
}

type writerStats struct {
	events  atomic.Uint64
	batches atomic.Uint64
}

// WriterStats counts the group-commit writer's work since Open.
type WriterStats struct {
	Events  uint64 // events committed through Append
	Batches uint64 // Update transactions that committed them
}

// AuditWriterStats reports how many events the writer committed in how many
// transactions (fewer transactions than events means batching works).
func (s *Store) AuditWriterStats() WriterStats {
	return WriterStats{Events: s.stats.events.Load(), Batches: s.stats.batches.Load()}
}

// Append records one event through the group-commit writer (audit.Sink). It
// returns once the batch holding the event is committed and fsynced, with
// ev's Seq, Time (if it was zero), PrevHash and Hash filled in. An error
// means the event may not be recorded: the data path must fail closed. If
// ctx ends first, Append returns its error; the event may still commit.
func (s *Store) Append(ctx context.Context, ev *audit.Event) error {
	req := &appendReq{ev: *ev, done: make(chan appendRes, 1)}
	if req.ev.Time.IsZero() {
		req.ev.Time = s.now()
	}
	req.ev.Time = req.ev.Time.UTC()

	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return fmt.Errorf("append audit event: %w", ErrClosed)
	}
	select {
	case s.queue <- req:
	case <-ctx.Done():
		s.closeMu.RUnlock()
		return fmt.Errorf("append audit event: %w", ctx.Err())
	}
	s.closeMu.RUnlock()

	select {
	case res := <-req.done:
		if res.err != nil {
			return fmt.Errorf("append audit event: %w", res.err)
		}
		*ev = res.ev
		return nil
	case <-ctx.Done():
		return fmt.Errorf("append audit event: %w", ctx.Err())
	}
}

// followUpHold is how long a follow-up row (an event with Ref set: the
// completion of a request whose intent row is already committed) may wait
// for other events to share its commit. A test may change it before Open.
var followUpHold = 10 * time.Millisecond

// writerLoop commits queued events in one transaction, then wakes the
// batch's callers. There is no timer for ordinary events: a lone event
// commits at once, and events arriving during a commit form the next batch.
//
// Follow-up rows (Ref != 0) never start a commit of their own while another
// event may soon come: they are held for at most followUpHold and ride with
// the next batch. On a busy data path each request then costs one commit
// (its intent, carrying earlier completions) instead of two, and a request's
// intent no longer waits behind the previous request's completion. Their
// callers still return only after the commit that holds them.
//
// It exits when Close has closed the queue and everything queued or held is
// committed.
func (s *Store) writerLoop() {
	defer close(s.writerDone)
	hold := followUpHold
	batch := make([]*appendReq, 0, maxBatch)
	held := make([]*appendReq, 0, maxBatch)
	all := make([]*appendReq, 0, maxBatch)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var due <-chan time.Time // the oldest held row's deadline; nil when none
	last := 0                // size of the last batch committed
	commit := func() {
		all = append(append(all[:0], held...), batch...) // held rows are older: they go first
		last = len(all)
		s.commitAndWake(all)
		clear(all)
		clear(held)
		clear(batch)
		held, batch = held[:0], batch[:0]
		if due != nil {
			timer.Stop()
			due = nil
		}
	}
	open := true
	for open {
		select {
		case req, ok := <-s.queue:
			if !ok {
				open = false
				break
			}
			batch = append(batch[:0], req)
			// Callers of the last batch are waking up to append again: let
			// them run first, while the queue still grows (a few yields at
			// most), so they join this batch rather than the next. This
			// costs nothing when nobody else is runnable, and a lone
			// caller (last batch of one) skips it.
			for i := 0; i < 4 && last > 1; i++ {
				n := len(s.queue)
				runtime.Gosched()
				if len(s.queue) == n {
					break
				}
			}
		case <-due:
			due = nil
			commit() // held rows only
			continue
		}
	fill:
		for open && len(batch)+len(held) < maxBatch {
			select {
			case r, ok := <-s.queue:
				if !ok {
					open = false
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		if open && hold > 0 {
			// move follow-ups out of a batch that holds nothing else
			urgent := false
			for _, r := range batch {
				if r.ev.Ref == 0 {
					urgent = true
					break
				}
			}
			if !urgent && len(batch)+len(held) < maxBatch {
				if len(held) == 0 {
					timer.Reset(hold)
					due = timer.C
				}
				held = append(held, batch...)
				clear(batch)
				batch = batch[:0]
				continue
			}
		}
		if len(batch)+len(held) > 0 {
			commit()
		}
	}
}

// commitAndWake commits one batch and hands every caller its result.
func (s *Store) commitAndWake(batch []*appendReq) {
	err := s.commitBatch(batch)
	if err == nil {
		s.stats.batches.Add(1)
		s.stats.events.Add(uint64(len(batch)))
		s.audited.poke()
	} else {
		s.log.Error("audit batch not committed", "events", len(batch), "err", err)
	}
	for _, r := range batch {
		r.done <- appendRes{ev: r.ev, err: err}
	}
}

// commitBatch seals and writes every event of the batch in one transaction.
func (s *Store) commitBatch(batch []*appendReq) error {
	sealed := make([]audit.Event, len(batch))
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := bucket(tx, bucketAudit)
		b.FillPercent = appendFill
		prev, err := lastHash(b)
		if err != nil {
			return err
		}
		for i, r := range batch {
			ev := r.ev
			if prev, err = putRow(b, &ev, prev); err != nil {
				return err
			}
			sealed[i] = ev
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
			return fmt.Errorf("%w: %w", ErrClosed, err)
		}
		return err
	}
	for i, r := range batch {
		r.ev = sealed[i]
	}
	return nil
}

// appendFill packs audit pages full: rows only ever go to the end (keys
// are increasing sequence numbers), so bbolt's default of half-full pages
// would only double the pages each commit writes and the file's size.
const appendFill = 1.0

// appendTx appends one event to the chain inside tx (the mutation path).
func (s *Store) appendTx(tx *bolt.Tx, ev *audit.Event) error {
	if ev.Time.IsZero() {
		ev.Time = s.now()
	}
	ev.Time = ev.Time.UTC()
	b := bucket(tx, bucketAudit)
	b.FillPercent = appendFill
	prev, err := lastHash(b)
	if err != nil {
		return err
	}
	_, err = putRow(b, ev, prev)
	return err
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

// putRow numbers, seals and stores ev after prev, and returns its hash.
func putRow(b *bolt.Bucket, ev *audit.Event, prev string) (string, error) {
	seq, err := b.NextSequence()
	if err != nil {
		return "", fmt.Errorf("number audit row: %w", err)
	}
	ev.Seq = seq
	raw, err := audit.Seal(ev, prev)
	if err != nil {
		return "", err
	}
	if err := b.Put(be64(seq), raw); err != nil {
		return "", fmt.Errorf("write audit row %d: %w", seq, err)
	}
	return ev.Hash, nil
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
