package store

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
)

// Opening and closing the journal: replay of what a previous run left,
// and the final commit at Close.

// openJournal loads the chain head from bbolt, commits the rows a previous
// run journaled but did not commit, and opens an empty journal. It runs in
// Open after the data key is unlocked, before any write; fresh is true for
// a store Open is creating (a journal found then belongs to another file
// and is set aside, never replayed).
func (s *Store) openJournal(fresh bool) error {
	j := &s.jr
	j.path = journalPath(s.path)
	j.foldedCh = make(chan struct{})
	j.wake = make(chan struct{}, 1)
	j.urgent = make(chan struct{}, 1)
	j.stop = make(chan struct{})
	j.done = make(chan struct{})
	files := []string{j.path + ".1", j.path}
	setAside := func(why string) error {
		for _, p := range files {
			if _, err := os.Stat(p); err != nil {
				continue
			}
			aside := p + "." + why + "-" + time.Now().UTC().Format("20060102T150405.000000000Z")
			if err := os.Rename(p, aside); err != nil {
				return fmt.Errorf("set aside audit journal %s: %w", p, err)
			}
			s.log.Warn("audit journal set aside", "path", aside, "why", why)
		}
		return nil
	}
	if fresh {
		// a journal without its store file belongs to another store
		if err := setAside("orphan"); err != nil {
			return err
		}
	} else {
		dropped, err := s.replayJournal(files)
		if err != nil {
			return err
		}
		if dropped > 0 {
			// keep the lines that did not replay for an investigator
			if err := setAside("damaged"); err != nil {
				return err
			}
		}
	}
	if err := os.Remove(files[0]); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove committed audit journal: %w", err)
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open audit journal: %w", err)
	}
	j.file = f
	return nil
}

// replayJournal reads the chain head from bbolt and commits, in one
// transaction, every journaled row after it that continues the chain. It
// stops at the first line that does not (a row torn by a power loss, or
// damage), and returns how many lines it dropped.
func (s *Store) replayJournal(files []string) (dropped int, err error) {
	j := &s.jr
	var rows []journalRow
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucketAudit))
		if b == nil {
			return nil
		}
		h, err := lastHash(b)
		if err != nil {
			return err
		}
		j.hash = h
		if k, _ := b.Cursor().Last(); k != nil {
			j.seq = binary.BigEndian.Uint64(k)
		} else if a, err := readAnchor(tx); err == nil {
			j.seq = a.Seq
		}
		if seq := b.Sequence(); seq > j.seq {
			j.seq = seq
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read audit log: %w", err)
	}
	j.folded = j.seq
	ver := audit.NewVerifier(j.hash)
	for _, p := range files {
		data, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("read audit journal: %w", err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			line := sc.Bytes()
			if dropped > 0 {
				dropped++
				continue
			}
			var head struct {
				Seq uint64 `json:"seq"`
			}
			if json.Unmarshal(line, &head) != nil {
				dropped++
				continue
			}
			if head.Seq <= j.seq {
				continue // committed before the stop
			}
			if head.Seq != j.seq+1 || ver.Next(line) != nil {
				dropped++
				continue
			}
			raw := append([]byte(nil), line...)
			rows = append(rows, journalRow{seq: head.Seq, raw: raw})
			j.seq, j.hash = head.Seq, ver.Last()
		}
		if sc.Err() != nil {
			dropped++ // a line too long to be a row
		}
	}
	if dropped > 0 {
		s.log.Warn("the audit journal ends with lines that do not continue the chain; they were not replayed", "lines", dropped)
	}
	if len(rows) == 0 {
		return dropped, nil
	}
	if err := s.db.Update(func(tx *bolt.Tx) error { return putRows(tx, rows) }); err != nil {
		return 0, fmt.Errorf("replay audit journal: %w", err)
	}
	j.folded = j.seq
	s.log.Info("audit rows replayed from the journal", "rows", len(rows))
	return dropped, nil
}

// closeJournal stops appends, lets the folder commit what is queued, and
// removes the journal if everything in it is committed.
func (s *Store) closeJournal() {
	j := &s.jr
	j.mu.Lock()
	j.closed = true
	j.broadcast()
	j.mu.Unlock()
	close(j.stop)
	<-j.done
	j.mu.Lock()
	defer j.mu.Unlock()
	clean := len(j.pending) == 0 && j.folded >= j.seq
	if j.file != nil {
		_ = j.file.Close()
		j.file = nil
	}
	if clean {
		_ = os.Remove(j.path)
		if j.oldPath != "" {
			_ = os.Remove(j.oldPath)
		}
	} else {
		s.log.Error("audit rows left uncommitted in the journal; the next start replays them", "rows", len(j.pending), "journal", j.path)
	}
}

// abandonJournal undoes openJournal for an Open that failed: it closes the
// file and removes it if it is empty (nothing was journaled) or belongs to
// a store file Open created and is removing.
func (s *Store) abandonJournal() {
	j := &s.jr
	if j.file == nil {
		return
	}
	_ = j.file.Close()
	j.file = nil
	if fi, err := os.Stat(j.path); err == nil && (fi.Size() == 0 || s.created) {
		_ = os.Remove(j.path)
	}
}
