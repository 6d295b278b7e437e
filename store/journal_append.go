package store

import (
	"context"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
)

// Appending rows: the data path's Append and AppendFollowUp, the waits
// for a commit, and the mutation path (appendTx inside writeTx).

// Append records one event (audit.Sink): it seals it after the chain's last
// row, fills in ev's Seq, Time (if it was zero), PrevHash and Hash, and
// writes it to the journal; with AuditSyncAlways it also waits for the
// fsynced commit that holds it. An error means the event may not be
// recorded: the data path must fail closed. If ctx ends while Append waits,
// it returns ctx's error; the event may still be recorded.
func (s *Store) Append(ctx context.Context, ev *audit.Event) error {
	row, err := s.appendRow(ctx, ev, false)
	if err != nil {
		return fmt.Errorf("append audit event: %w", err)
	}
	if s.auditSync == AuditSyncAlways {
		if err := s.waitFolded(ctx, row.seq); err != nil {
			return fmt.Errorf("append audit event: %w", err)
		}
	}
	return nil
}

// AppendFollowUp records a follow-up row (audit.FollowUpSink): the
// completion of a request whose intent row is already recorded. The row is
// sealed at once, in order, and fills in ev like Append; it reaches the
// journal with the next row's write or before the next group commit,
// whichever comes first, so it costs no write of its own and never waits,
// in either sync mode. A crash of the process can lose it while it waits.
func (s *Store) AppendFollowUp(ev *audit.Event) error {
	if _, err := s.appendRow(context.Background(), ev, true); err != nil {
		return fmt.Errorf("append audit event: %w", err)
	}
	return nil
}

// appendRow seals ev and queues it for the folder (waking it for the first
// row of a batch; later rows ride with the commit that one asks for). A
// follow-up row waits for the next write; any other is written now, and
// waits first while maxPending rows are queued.
func (s *Store) appendRow(ctx context.Context, ev *audit.Event, followUp bool) (journalRow, error) {
	if ev.Time.IsZero() {
		ev.Time = s.now()
	}
	ev.Time = ev.Time.UTC()
	j := &s.jr
	j.mu.Lock()
	for {
		switch {
		case j.closed:
			j.mu.Unlock()
			return journalRow{}, ErrClosed
		case j.foldErr != nil:
			err := j.foldErr
			j.mu.Unlock()
			return journalRow{}, fmt.Errorf("the audit log cannot be committed: %w", err)
		}
		if followUp || len(j.pending) < maxPending {
			break
		}
		ch := j.foldedCh
		j.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return journalRow{}, ctx.Err()
		}
		j.mu.Lock()
	}
	seal := j.seal
	if followUp {
		seal = j.sealLater
	}
	row, err := seal(ev)
	if err != nil {
		j.mu.Unlock()
		return journalRow{}, err
	}
	j.pending = append(j.pending, row)
	first := len(j.pending) == 1
	j.mu.Unlock()
	if first {
		select {
		case j.wake <- struct{}{}:
		default:
		}
	}
	return row, nil
}

// waitFolded waits until row seq is committed to bbolt.
func (s *Store) waitFolded(ctx context.Context, seq uint64) error {
	j := &s.jr
	j.mu.Lock()
	for j.folded < seq {
		if j.foldErr != nil {
			err := j.foldErr
			j.mu.Unlock()
			return fmt.Errorf("the audit log cannot be committed: %w", err)
		}
		ch := j.foldedCh
		j.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		j.mu.Lock()
	}
	j.mu.Unlock()
	return nil
}

// syncAudit makes every row journaled before the call visible in bbolt, so
// a reader sees its own writes. If commits are failing it returns at once:
// the reader gets what is committed. urgent ends the folder's batch window
// early (a one-shot read a human waits for); a reader that polls after
// every commit (a live tail) must not, or each commit would trigger the
// next one at once instead of one per window.
func (s *Store) syncAudit(urgent bool) {
	j := &s.jr
	j.mu.Lock()
	target, done := j.seq, j.folded >= j.seq
	j.mu.Unlock()
	if done {
		return
	}
	if urgent {
		select {
		case j.urgent <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = s.waitFolded(ctx, target)
}

// appendTx appends one event to the chain inside tx, the write transaction
// of a store mutation (run through writeTx), so a change and its row commit
// together. It first moves every queued row into tx, keeping the bucket
// free of gaps, then seals ev after them and journals it. If tx does not
// commit, writeTx puts all of these rows back on the queue: the rows after
// ev are already chained from it, so it is committed regardless (a row for
// a change that failed to commit, only on a disk error; never a gap).
func (s *Store) appendTx(tx *bolt.Tx, ev *audit.Event) error {
	if ev.Time.IsZero() {
		ev.Time = s.now()
	}
	ev.Time = ev.Time.UTC()
	j := &s.jr
	j.mu.Lock()
	if j.closed && j.file == nil {
		j.mu.Unlock()
		return fmt.Errorf("append audit event: %w", ErrClosed)
	}
	row, err := j.seal(ev)
	if err != nil {
		j.mu.Unlock()
		return fmt.Errorf("append audit event: %w", err)
	}
	queued := j.pending
	j.pending = nil
	j.mu.Unlock()
	j.txRows = append(append(j.txRows, queued...), row)
	return putRows(tx, append(queued, row))
}

// writeTx runs fn in a bbolt write transaction that may call appendTx, and
// settles the rows appendTx moved: committed on success, queued again on
// failure.
func (s *Store) writeTx(fn func(tx *bolt.Tx) error) error {
	s.jr.commitMu.Lock()
	defer s.jr.commitMu.Unlock()
	var rows []journalRow
	err := s.db.Update(func(tx *bolt.Tx) error {
		err := fn(tx)
		rows = s.jr.txRows
		s.jr.txRows = nil
		return err
	})
	if len(rows) > 0 {
		j := &s.jr
		j.mu.Lock()
		if err == nil {
			s.noteCommitted(rows)
		} else {
			j.pending = append(rows, j.pending...)
			select {
			case j.wake <- struct{}{}:
			default:
			}
		}
		j.mu.Unlock()
	}
	return closedErr(err)
}
