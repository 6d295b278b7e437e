package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/admin/client"
	"github.com/agentvault/agent-vault/audit"
)

func (a *app) auditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "List the audit log and verify its hash chain"}
	var f api.AuditFilter
	var asJSON bool
	list := &cobra.Command{
		Use:   "list [--vault V] [--agent A] [--user U] [--action X] [--decision allow|deny] [--since D] [--until D] [--limit N] [--cursor C]",
		Short: "List audit rows, newest first",
		Long: `Lists audit rows, newest first. --since and --until take a duration meaning
"that long ago" (1h, 30m) or an RFC 3339 time. A page holds at most --limit rows
(default 100, at most 1000); the next page starts at the printed cursor
(--cursor). With --json: {"events": [...], "next_cursor": N}.`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkDecision(f.Decision); err != nil {
				return err
			}
			if f.Limit < 0 || f.Limit > 1000 {
				return usagef("--limit must be between 1 and 1000")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			page, err := c.Audit(cmd.Context(), f)
			if err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				return a.printJSON(page)
			}
			rows := [][]string{{"SEQ", "TIME", "ACTOR", "ACTION", "VAULT", "TARGET", "DECISION", "REASON", "REQUEST", "STATUS"}}
			for _, e := range page.Events {
				c := auditCellsOf(e)
				rows = append(rows, []string{strconv.FormatUint(e.Seq, 10), e.Time.Local().Format(time.DateTime),
					c.actor, c.action, dash(c.vault), dash(c.target), dash(c.decision), dash(c.reason), dash(c.request), dash(c.status)})
			}
			if err := a.table(rows); err != nil {
				return err
			}
			if page.NextCursor != 0 {
				fmt.Fprintf(a.stdout, "More rows: add --cursor %d\n", page.NextCursor)
			}
			return nil
		},
	}
	fl := list.Flags()
	auditFilterFlags(fl, &f)
	fl.IntVar(&f.Limit, "limit", 0, "at most this many rows (default 100, at most 1000)")
	fl.Uint64Var(&f.Cursor, "cursor", 0, "continue from a previous page's cursor")
	fl.BoolVar(&asJSON, "json", false, "print one JSON document")

	verify := &cobra.Command{
		Use:   "verify",
		Short: "Check the audit log's hash chain (through the running server)",
		Long: `Asks the running server to check the whole audit hash chain: every row must
carry the hash of the row before it and match its own hash. The server holds the
store file open, so the check runs there. Exits 1 when the chain is broken and
names the first bad row.`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			v, err := c.AuditVerify(cmd.Context())
			if err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				if err := a.printJSON(v); err != nil {
					return err
				}
			} else if v.OK {
				fmt.Fprintf(a.stdout, "Audit chain intact: %d rows verified.\n", v.Rows)
			}
			if !v.OK {
				return withHint(fmt.Errorf("audit chain broken at row %d: %s", v.BrokenSeq, v.Reason),
					"the log was altered; keep the store file for investigation")
			}
			return nil
		},
	}
	jsonFlag(&asJSON, verify)
	cmd.AddCommand(list, verify, a.auditTailCmd(), a.auditExportCmd())
	return cmd
}

// auditFilterFlags are the filters every audit command takes.
func auditFilterFlags(fl *pflag.FlagSet, f *api.AuditFilter) {
	fl.StringVar(&f.Vault, "vault", "", "only this vault")
	fl.StringVar(&f.Agent, "agent", "", "only this agent")
	fl.StringVar(&f.User, "user", "", "only this user (email)")
	fl.StringVar(&f.Action, "action", "", "only this action (request, vault.create, user.login, proposal.approve, ...)")
	fl.StringVar(&f.Decision, "decision", "", "only allow or deny")
	fl.StringVar(&f.Since, "since", "", "only rows newer than this (duration ago, or RFC 3339)")
	fl.StringVar(&f.Until, "until", "", "only rows older than this (duration ago, or RFC 3339)")
}

// streamFilterFlags are the filters of audit tail and export.
func streamFilterFlags(fl *pflag.FlagSet, f *api.AuditFilter, after *uint64) {
	auditFilterFlags(fl, f)
	fl.Uint64Var(after, "after", 0, "only rows after this seq")
}

func checkDecision(d string) error {
	if d != "" && d != audit.DecisionAllow && d != audit.DecisionDeny {
		return usagef("--decision must be allow or deny")
	}
	return nil
}

// auditCells are the printed fields of one row, cleaned of control
// characters: paths, hosts and names come from agents and must not drive
// the operator's terminal.
type auditCells struct{ actor, action, vault, target, decision, reason, request, status string }

func auditCellsOf(e audit.Event) auditCells {
	c := auditCells{
		actor:    clean(string(e.Actor.Kind) + ":" + e.Actor.Name),
		action:   clean(e.Action),
		vault:    clean(e.Vault),
		target:   clean(firstNonEmpty(e.Target, e.Service, e.Credential)),
		decision: clean(e.Decision),
		reason:   clean(e.Reason),
		request:  clean(strings.TrimSpace(e.Method + " " + e.Host + e.Path)),
	}
	if e.Status != 0 {
		c.status = strconv.Itoa(e.Status)
	}
	return c
}

func auditRow(e audit.Event) string {
	c := auditCellsOf(e)
	line := fmt.Sprintf("%d  %s  %s  %s", e.Seq, e.Time.Local().Format(time.DateTime), c.actor, c.action)
	for _, kv := range [][2]string{{"vault", c.vault}, {"target", c.target}, {"decision", c.decision}, {"reason", c.reason}, {"request", c.request}, {"status", c.status}} {
		if kv[1] != "" {
			line += "  " + kv[0] + "=" + kv[1]
		}
	}
	return line
}

func (a *app) auditTailCmd() *cobra.Command {
	var f api.AuditFilter
	var after uint64
	var count int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "tail [filters] [--json] [--count N]",
		Short: "Follow the audit log live",
		Long: `Prints new audit rows as they are committed (server-sent events from
GET /api/v1/audit/stream), until interrupted or --count rows were printed.
--after SEQ starts after that row instead of with the next new one. With --json
each row is one JSON line.`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkDecision(f.Decision); err != nil {
				return err
			}
			if count < 0 {
				return usagef("--count must not be negative")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			n := 0
			err = c.AuditStream(cmd.Context(), f, after, func(e audit.Event) error {
				if asJSON {
					b, err := json.Marshal(e)
					if err != nil {
						return err
					}
					if _, err := fmt.Fprintf(a.stdout, "%s\n", b); err != nil {
						return err
					}
				} else if _, err := fmt.Fprintln(a.stdout, auditRow(e)); err != nil {
					return err
				}
				n++
				if count > 0 && n >= count {
					return client.ErrStop
				}
				return nil
			})
			if err != nil && cmd.Context().Err() == nil {
				return a.explain(cmd, err)
			}
			return nil
		},
	}
	streamFilterFlags(cmd.Flags(), &f, &after)
	cmd.Flags().IntVar(&count, "count", 0, "exit after this many rows (default: follow until interrupted)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each row as one JSON line")
	return cmd
}

func (a *app) auditExportCmd() *cobra.Command {
	var f api.AuditFilter
	var after uint64
	var out string
	cmd := &cobra.Command{
		Use:   "export [filters] [-o FILE]",
		Short: "Write audit rows as JSON lines, oldest first",
		Long: `Writes every audit row matching the filters as JSON lines (one row per line,
oldest first, with seq, prev_hash and hash, so the chain can be checked
offline) to stdout or to FILE (mode 0600).`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkDecision(f.Decision); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			var w io.Writer = a.stdout
			var file *os.File
			if out != "" && out != "-" {
				if file, err = os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600); err != nil {
					return fmt.Errorf("create %s: %w", out, err)
				}
				defer file.Close()
				w = file
			}
			bw := bufio.NewWriter(w)
			n, err := c.AuditExport(cmd.Context(), f, after, bw)
			if ferr := bw.Flush(); err == nil && ferr != nil {
				err = fmt.Errorf("write export: %w", ferr)
			}
			if err != nil {
				return a.explain(cmd, err)
			}
			if file != nil {
				if err := file.Close(); err != nil {
					return fmt.Errorf("write %s: %w", out, err)
				}
				fmt.Fprintf(a.stderr, "%d audit rows written to %s.\n", n, out)
			}
			return nil
		},
	}
	streamFilterFlags(cmd.Flags(), &f, &after)
	cmd.Flags().StringVarP(&out, "output", "o", "", "write to this file instead of stdout")
	return cmd
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

func (a *app) caCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "The root CA agents must trust"}
	var out string
	export := &cobra.Command{
		Use:   "export [-o FILE]",
		Short: "Print (or write to FILE) the root CA certificate in PEM",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			pem, err := c.CACert(cmd.Context())
			if err != nil {
				return a.explain(cmd, err)
			}
			if out == "" || out == "-" {
				_, err := a.stdout.Write(pem)
				return err
			}
			if err := os.WriteFile(out, pem, 0o644); err != nil {
				return fmt.Errorf("write %s: %w", out, err)
			}
			fmt.Fprintf(a.stderr, "CA certificate written to %s.\n", out)
			return nil
		},
	}
	export.Flags().StringVarP(&out, "output", "o", "", "write to this file instead of stdout")
	cmd.AddCommand(export)
	return cmd
}

func (a *app) versionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if asJSON {
				return a.printJSON(map[string]string{"version": version, "go": runtime.Version()})
			}
			fmt.Fprintf(a.stdout, "agent-vault %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
	jsonFlag(&asJSON, cmd)
	return cmd
}
