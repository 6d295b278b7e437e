package store

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// The folder: group commits of journaled rows into bbolt, and rotation of
// the journal file.

// foldLoop commits queued rows until Close, then commits what is left.
func (s *Store) foldLoop() {
	j := &s.jr
	defer close(j.done)
	delay := time.NewTimer(time.Hour)
	delay.Stop()
	last := 0 // rows in the last commit
	for {
		select {
		case <-j.wake:
		case <-j.stop:
			for s.foldOnce() > 0 {
			}
			return
		}
		if s.auditSync == AuditSyncBatch {
			// let the window fill: rows appended meanwhile do not wake us
			delay.Reset(foldWindow)
			select {
			case <-delay.C:
			case <-j.urgent: // a reader waits for these rows
				delay.Stop()
			case <-j.stop:
				delay.Stop()
			}
		} else if last > 1 {
			// The callers of the last commit are waking up to append
			// again: let them run first while the queue still grows (a
			// few yields at most), so they share this commit rather than
			// each wait for the next. A lone caller skips this.
			for range 4 {
				n := s.pendingLen()
				runtime.Gosched()
				if s.pendingLen() == n {
					break
				}
			}
		}
		n := s.foldOnce()
		for ; n < 0; n = s.foldOnce() {
			select { // a failing disk: retry, but let Close end the wait
			case <-time.After(foldRetry):
			case <-j.stop:
			}
			j.mu.Lock()
			closed := j.closed
			j.mu.Unlock()
			if closed {
				for s.foldOnce() > 0 {
				}
				return
			}
		}
		last = n
	}
}

func (s *Store) pendingLen() int {
	s.jr.mu.Lock()
	defer s.jr.mu.Unlock()
	return len(s.jr.pending)
}

var errNothingToFold = errors.New("nothing to fold")

// foldOnce commits the queued rows in one transaction. It returns how many
// it committed, or -1 if the commit failed (the rows stay queued).
func (s *Store) foldOnce() int {
	j := &s.jr
	j.commitMu.Lock()
	defer j.commitMu.Unlock()
	var rows []journalRow
	err := s.db.Update(func(tx *bolt.Tx) error {
		j.mu.Lock()
		if err := j.flushUnwritten(); err != nil {
			s.log.Error("audit journal not written", "err", err)
		}
		rows, j.pending, j.spare = j.pending, j.spare[:0], nil
		j.mu.Unlock()
		if len(rows) == 0 {
			return errNothingToFold
		}
		return putRows(tx, rows)
	})
	if errors.Is(err, errNothingToFold) {
		j.mu.Lock()
		j.spare = rows
		j.mu.Unlock()
		return 0
	}
	if err != nil {
		err = closedErr(err)
		j.mu.Lock()
		j.pending = append(rows, j.pending...)
		if j.foldErr == nil {
			s.log.Error("audit rows not committed; data-path requests are refused until a commit succeeds", "rows", len(rows), "err", err)
		}
		j.foldErr = err
		j.broadcast()
		j.mu.Unlock()
		return -1
	}
	n := len(rows)
	j.mu.Lock()
	if j.foldErr != nil {
		s.log.Info("audit rows commit again", "rows", n)
		j.foldErr = nil
	}
	s.noteCommitted(rows)
	clear(rows)
	j.spare = rows[:0]
	j.maybeRotate(s)
	j.mu.Unlock()
	s.audited.poke()
	return n
}

// noteCommitted counts a transaction that committed rows and records them
// as in bbolt. Caller holds jr.mu.
func (s *Store) noteCommitted(rows []journalRow) {
	s.stats.events.Add(uint64(len(rows)))
	s.stats.batches.Add(1)
	s.jr.committed(rows[len(rows)-1].seq)
}

// closedErr marks bbolt's "database not open" as ErrClosed.
func closedErr(err error) error {
	if err != nil && errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return err
}

// committed records that every row up to last is in bbolt. Caller holds mu.
func (j *journal) committed(last uint64) {
	if last > j.folded {
		j.folded = last
	}
	j.broadcast()
	if j.oldPath != "" && j.folded >= j.oldLast {
		_ = os.Remove(j.oldPath)
		j.oldPath = ""
	}
}

// maybeRotate starts a new journal file once the current one is large and
// no older file is still waiting for its rows' commit. Caller holds mu.
func (j *journal) maybeRotate(s *Store) {
	if j.size < rotateSize || j.oldPath != "" || j.broken != nil {
		return
	}
	old := j.path + ".1"
	if err := os.Rename(j.path, old); err != nil {
		s.log.Warn("audit journal not rotated", "err", err)
		return
	}
	f, err := openJournalFile(j.path)
	if err != nil {
		// keep appending to the renamed file; replay reads both names
		_ = os.Rename(old, j.path)
		s.log.Warn("audit journal not rotated", "err", err)
		return
	}
	_ = j.file.Close()
	j.file, j.size = f, 0
	if j.folded >= j.seq {
		_ = os.Remove(old)
		return
	}
	j.oldPath, j.oldLast = old, j.seq
}

func openJournalFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit journal: %w", err)
	}
	return f, nil
}

// putRows writes sealed rows into the audit bucket in order.
func putRows(tx *bolt.Tx, rows []journalRow) error {
	b := bucket(tx, bucketAudit)
	b.FillPercent = appendFill
	for _, r := range rows {
		if err := b.Put(be64(r.seq), r.raw); err != nil {
			return fmt.Errorf("write audit row %d: %w", r.seq, err)
		}
	}
	if last := rows[len(rows)-1].seq; last > b.Sequence() {
		return b.SetSequence(last)
	}
	return nil
}

// appendFill packs audit pages full: rows only ever go to the end (keys
// are increasing sequence numbers), so bbolt's default of half-full pages
// would only double the pages each commit writes and the file's size.
const appendFill = 1.0
