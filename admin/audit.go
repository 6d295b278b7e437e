package admin

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/store"
)

// maxAuditLimit is the largest page the API returns.
const maxAuditLimit = 1000

// auditScope checks the caller may read the rows q asks for: an
// instance-wide approver (or higher) reads everything, a vault approver only
// with the vault filter set to that vault.
func auditScope(p *principal, q store.AuditQuery) error {
	if p.allowed("", roleAudit) {
		return nil
	}
	if q.Vault == "" {
		if p.anyVault(roleAudit) {
			return errorf(http.StatusForbidden, api.CodeForbidden,
				"your role allows the audit log of your vaults only: add the vault filter (vault=NAME)")
		}
		return p.require("", roleAudit)
	}
	return p.require(q.Vault, roleAudit)
}

func (s *Server) auditList(w http.ResponseWriter, r *http.Request, p *principal) error {
	q, err := parseAuditQuery(r.URL.Query(), s.now())
	if err != nil {
		return err
	}
	if err := auditScope(p, q); err != nil {
		return err
	}
	rows, next, err := s.cfg.Store.AuditList(q)
	if err != nil {
		return err
	}
	if rows == nil {
		rows = []audit.Event{}
	}
	writeJSON(w, http.StatusOK, api.AuditPage{Events: rows, NextCursor: next})
	return nil
}

// parseAuditQuery reads the filters of GET /audit. Unknown parameters are
// refused so a typo does not silently list everything.
func parseAuditQuery(v url.Values, now time.Time) (store.AuditQuery, error) {
	var q store.AuditQuery
	bad := func(format string, args ...any) error {
		return errorf(http.StatusBadRequest, api.CodeInvalid, fmt.Sprintf(format, args...))
	}
	for k, vals := range v {
		if len(vals) != 1 {
			return q, bad("invalid query: %q given %d times", k, len(vals))
		}
		val := vals[0]
		if len(val) > 256 {
			return q, bad("invalid %s: too long", k)
		}
		var err error
		switch k {
		case "vault":
			q.Vault = val
		case "agent":
			q.Agent = val
		case "user":
			q.User = val
		case "action":
			q.Action = val
		case "decision":
			if val != audit.DecisionAllow && val != audit.DecisionDeny {
				return q, bad("invalid decision %q: use allow or deny", val)
			}
			q.Decision = val
		case "since":
			if q.Since, err = parseWhen(val, now); err != nil {
				return q, bad("invalid since %q: %v", val, err)
			}
		case "until":
			if q.Until, err = parseWhen(val, now); err != nil {
				return q, bad("invalid until %q: %v", val, err)
			}
		case "limit":
			if q.Limit, err = strconv.Atoi(val); err != nil || q.Limit < 1 || q.Limit > maxAuditLimit {
				return q, bad("invalid limit %q: use 1 to %d", val, maxAuditLimit)
			}
		case "cursor":
			if q.Cursor, err = strconv.ParseUint(val, 10, 64); err != nil || q.Cursor == 0 {
				return q, bad("invalid cursor %q: pass next_cursor of the previous page", val)
			}
		default:
			return q, bad("unknown query parameter %q (use vault, agent, user, action, decision, since, until, limit, cursor)", k)
		}
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && q.Until.Before(q.Since) {
		return q, bad("invalid range: until is before since")
	}
	return q, nil
}

// parseWhen takes an RFC 3339 time or a duration meaning "that long before
// now".
func parseWhen(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return time.Time{}, errors.New("use an RFC 3339 time or a duration like 1h")
	}
	if d < 0 {
		return time.Time{}, errors.New("a duration means \"that long ago\" and must not be negative")
	}
	return now.Add(-d), nil
}

func (s *Server) auditVerify(w http.ResponseWriter, r *http.Request, p *principal) error {
	if !p.anyVault(roleAudit) {
		return p.require("", roleAudit)
	}
	rows, err := s.cfg.Store.AuditVerify()
	var broken *audit.BrokenError
	switch {
	case errors.As(err, &broken):
		writeJSON(w, http.StatusOK, api.AuditVerify{OK: false, Rows: rows, BrokenSeq: broken.Seq, Reason: broken.Reason})
		return nil
	case err != nil:
		return err
	}
	writeJSON(w, http.StatusOK, api.AuditVerify{OK: true, Rows: rows})
	return nil
}
