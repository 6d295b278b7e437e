package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/store"
)

// GET /audit/stream follows the log live as server-sent events (one
// "audit" event per row, its id the row's seq, its data the row's JSON);
// GET /audit/export writes the matching rows oldest first as JSON lines.
// Both take the filters of GET /audit plus after=SEQ (rows after that
// one); the stream also resumes from a Last-Event-ID header, and without
// either it starts with the next new row.

// streamQuery parses the filters and after=.
func (s *Server) streamQuery(r *http.Request, p *principal) (store.AuditQuery, uint64, bool, error) {
	vals := url.Values{}
	var after uint64
	hasAfter := false
	for k, v := range r.URL.Query() {
		if k == "after" {
			if len(v) != 1 {
				return store.AuditQuery{}, 0, false, errorf(http.StatusBadRequest, api.CodeInvalid, "invalid after: give it once")
			}
			n, err := strconv.ParseUint(v[0], 10, 64)
			if err != nil {
				return store.AuditQuery{}, 0, false, errorf(http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf("invalid after %q: use a row's seq", v[0]))
			}
			after, hasAfter = n, true
			continue
		}
		if k == "limit" || k == "cursor" {
			return store.AuditQuery{}, 0, false, errorf(http.StatusBadRequest, api.CodeInvalid,
				fmt.Sprintf("%s does not apply here (use after=SEQ)", k))
		}
		vals[k] = v
	}
	q, err := parseAuditQuery(vals, s.now())
	if err != nil {
		return q, 0, false, err
	}
	if err := auditScope(p, q); err != nil {
		return q, 0, false, err
	}
	q.Limit = 1000
	return q, after, hasAfter, nil
}

func (s *Server) auditExport(w http.ResponseWriter, r *http.Request, p *principal) error {
	q, after, _, err := s.streamQuery(r, p)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	for range 1 << 30 {
		rows, last, err := s.cfg.Store.AuditAfter(after, q)
		if err != nil {
			s.log.Error("admin audit export stopped", "after", after, "err", err)
			return nil // the status is sent; the client sees a short file
		}
		for i := range rows {
			if err := enc.Encode(&rows[i]); err != nil {
				return nil
			}
		}
		if last == after || r.Context().Err() != nil {
			return nil
		}
		after = last
	}
	return nil
}

func (s *Server) auditStream(w http.ResponseWriter, r *http.Request, p *principal) error {
	q, after, hasAfter, err := s.streamQuery(r, p)
	if err != nil {
		return err
	}
	if id := r.Header.Get("Last-Event-ID"); id != "" && !hasAfter {
		if n, err := strconv.ParseUint(id, 10, 64); err == nil {
			after, hasAfter = n, true
		}
	}
	// subscribe before reading the tail, so no row falls in between
	notify, cancel := s.cfg.Store.AuditAppended()
	defer cancel()
	if !hasAfter {
		if after, err = s.cfg.Store.AuditLastSeq(); err != nil {
			return err
		}
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if _, err := fmt.Fprintf(w, ": agent-vault audit stream after row %d\n\n", after); err != nil {
		return nil
	}
	if rc.Flush() != nil {
		return nil
	}
	beat := time.NewTicker(s.cfg.StreamHeartbeat)
	defer beat.Stop()
	for {
		rows, last, err := s.cfg.Store.AuditAfter(after, q)
		if err != nil {
			s.log.Error("admin audit stream stopped", "after", after, "err", err)
			return nil
		}
		for i := range rows {
			data, err := json.Marshal(&rows[i])
			if err != nil {
				return nil
			}
			if _, err := fmt.Fprintf(w, "id: %d\nevent: audit\ndata: %s\n\n", rows[i].Seq, data); err != nil {
				return nil
			}
		}
		if len(rows) > 0 && rc.Flush() != nil {
			return nil
		}
		if last != after {
			after = last
			continue // there may be more
		}
		select {
		case _, ok := <-notify:
			if !ok {
				return nil // the store closed
			}
		case <-beat.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil || rc.Flush() != nil {
				return nil
			}
		case <-r.Context().Done():
			return nil
		case <-s.streams.Done():
			return nil
		}
	}
}
