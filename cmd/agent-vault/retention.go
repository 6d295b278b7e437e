package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/agentvault/agent-vault/store"
)

// parseRetention reads --audit-retention: a Go duration or a number of
// days ("90d"). Empty means keep everything (0). At least one hour.
func parseRetention(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil {
			return 0, fmt.Errorf("%q is not a number of days (like 90d)", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%q is not a duration (like 90d or 720h)", s)
		}
	}
	if d < time.Hour {
		return 0, fmt.Errorf("%q is shorter than an hour", s)
	}
	return d, nil
}

// pruneAudit deletes audit rows older than keep at start and then hourly,
// until ctx ends. The store records each deletion as an audit.prune row
// and keeps the hash anchor, so `audit verify` stays green.
func pruneAudit(ctx context.Context, st *store.Store, keep time.Duration, log *slog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := st.PruneAudit(time.Now().Add(-keep)); err != nil {
			log.Error("audit retention: prune failed", "err", err)
		} else if n > 0 {
			log.Info("audit retention: pruned old rows", "rows", n, "keep", keep.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
