package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentvault/agent-vault/admin/api"
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
			if f.Decision != "" && f.Decision != audit.DecisionAllow && f.Decision != audit.DecisionDeny {
				return usagef("--decision must be allow or deny")
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
				req := strings.TrimSpace(e.Method + " " + e.Host + e.Path)
				status := ""
				if e.Status != 0 {
					status = strconv.Itoa(e.Status)
				}
				target := e.Target
				if target == "" {
					target = firstNonEmpty(e.Service, e.Credential)
				}
				rows = append(rows, []string{strconv.FormatUint(e.Seq, 10), e.Time.Local().Format(time.DateTime),
					string(e.Actor.Kind) + ":" + e.Actor.Name, e.Action, dash(e.Vault), dash(target), dash(e.Decision),
					dash(e.Reason), dash(req), dash(status)})
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
	fl.StringVar(&f.Vault, "vault", "", "only this vault")
	fl.StringVar(&f.Agent, "agent", "", "only this agent")
	fl.StringVar(&f.User, "user", "", "only this user (email)")
	fl.StringVar(&f.Action, "action", "", "only this action (request, vault.create, user.login, ...)")
	fl.StringVar(&f.Decision, "decision", "", "only allow or deny")
	fl.StringVar(&f.Since, "since", "", "only rows newer than this (duration ago, or RFC 3339)")
	fl.StringVar(&f.Until, "until", "", "only rows older than this (duration ago, or RFC 3339)")
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
	verify.Flags().BoolVar(&asJSON, "json", false, "print one JSON document")
	cmd.AddCommand(list, verify)
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
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON document")
	return cmd
}
