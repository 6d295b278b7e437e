package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/admin/client"
)

// app is the process's outside world, so tests can run commands in-process.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	isTerminal     func(fd int) bool
	// reexec, when set, replaces the process before the server starts
	// (main sets reexecWithSysmonSetting; tests run the server in-process)
	reexec func(context.Context, *slog.Logger)

	server string   // --server, resolved by serverURL
	args   []string // the command line, for the detached child
}

func newApp() *app {
	return &app{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv, isTerminal: isTerminal}
}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError is a mistake in how the command was called: exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// hintError is a failure with what to do next.
type hintError struct {
	err  error
	hint string
}

func (e *hintError) Error() string { return e.err.Error() + ": " + e.hint }
func (e *hintError) Unwrap() error { return e.err }

func withHint(err error, hint string) error { return &hintError{err: err, hint: hint} }

// execute runs the command line and returns the exit code. Errors are
// printed to stderr as one line.
func execute(ctx context.Context, a *app, args []string) int {
	a.args = args
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	code := exitFailure
	var ue *usageError
	if errors.As(err, &ue) || isCobraUsageError(err) {
		code = exitUsage
		path := root.CommandPath()
		if cmd, _, ferr := root.Find(args); ferr == nil {
			path = cmd.CommandPath()
		}
		err = fmt.Errorf("%w (see '%s --help')", err, path)
	}
	fmt.Fprintln(a.stderr, "agent-vault: "+oneLine(err.Error()))
	return code
}

// isCobraUsageError recognises cobra's own usage errors (unknown commands,
// flags, bad flag values, wrong argument counts), which are plain errors.
func isCobraUsageError(err error) bool {
	var he *hintError
	var ae *client.APIError
	if errors.As(err, &he) || errors.As(err, &ae) {
		return false
	}
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "invalid argument",
		"flag needs an argument", "required flag", "accepts ", "requires at least", "bad flag syntax"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	s = strings.ReplaceAll(s, "\r", " ")
	return strings.ReplaceAll(s, "\n", " ")
}

// exactArgs is cobra.ExactArgs with a usage error naming what is missing.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			if len(names) == 0 {
				return usagef("%s takes no arguments", cmd.CommandPath())
			}
			return usagef("%s needs %s", cmd.CommandPath(), strings.Join(names, " "))
		}
		return nil
	}
}

// need returns a usage error when a required flag is empty.
func need(cmd *cobra.Command, flags ...string) error {
	for _, f := range flags {
		if v, err := cmd.Flags().GetString(f); err == nil && v == "" {
			return usagef("%s needs --%s", cmd.CommandPath(), f)
		}
	}
	return nil
}

// nameAction describes a command that acts on one named thing and says so:
// "Service api deleted from vault prod." or, with --json,
// {"deleted": "api", "vault": "prod"}.
type nameAction struct {
	use, arg, short string  // "delete", "NAME", "Delete a service"
	noun, done      string  // "Service", "deleted"
	vault           *string // not nil: --vault is required and named in the output
	do              func(ctx context.Context, c *client.Client, vault, name string) error
}

// nameActionCmd is the command n describes, with --json bound to asJSON
// (--vault, when n needs it, is the caller's to add).
func (a *app) nameActionCmd(asJSON *bool, n nameAction) *cobra.Command {
	use := n.use + " " + n.arg
	if n.vault != nil {
		use = n.use + " --vault VAULT " + n.arg
	}
	return &cobra.Command{
		Use:   use,
		Short: n.short,
		Args:  exactArgs(n.arg),
		RunE: func(cmd *cobra.Command, args []string) error {
			vault, where := "", ""
			if n.vault != nil {
				if err := need(cmd, "vault"); err != nil {
					return err
				}
				vault, where = *n.vault, " from vault "+*n.vault
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			if err := n.do(cmd.Context(), c, vault, args[0]); err != nil {
				return a.explain(cmd, err)
			}
			if *asJSON {
				out := map[string]string{n.done: args[0]}
				if n.vault != nil {
					out["vault"] = vault
				}
				return a.printJSON(out)
			}
			fmt.Fprintf(a.stdout, "%s %s %s%s.\n", n.noun, args[0], n.done, where)
			return nil
		},
	}
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "agent-vault",
		Short: "A credential broker for AI agents, run as a transparent network appliance",
		Long: `Agent Vault brokers credentials for AI agents: agents call APIs holding no real
secret, the appliance injects the credential on the wire and audits every request.

Start the appliance with 'agent-vault server'; every other command talks to its
admin API (--server or AGENT_VAULT_ADDR, default ` + client.DefaultAddr + `),
authenticated by the session 'login' saves or by AGENT_VAULT_TOKEN.

Exit codes: 0 success, 1 failure, 2 usage error.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return cmd.Help()
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err.Error()} })
	root.PersistentFlags().StringVar(&a.server, "server", "",
		"admin API address (env AGENT_VAULT_ADDR; default "+client.DefaultAddr+")")
	root.AddCommand(a.serverCmd(), a.setupCmd(), a.loginCmd(), a.logoutCmd(), a.vaultCmd(), a.credentialCmd(),
		a.serviceCmd(), a.agentCmd(), a.auditCmd(), a.caCmd(), a.versionCmd(), a.runCmd(), a.doctorCmd())
	root.AddCommand(a.proposalCmd(), a.userCmd(), a.whoamiCmd()) // control plane: cmd_proposal.go, cmd_user.go
	for _, c := range root.Commands() {
		setArgsRecursively(c)
	}
	return root
}

// setArgsRecursively makes group commands (vault, agent, ...) refuse
// unknown sub-commands with a usage error instead of printing help.
func setArgsRecursively(c *cobra.Command) {
	if c.HasSubCommands() && c.RunE == nil && c.Run == nil {
		c.Args = func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q for %s", args[0], cmd.CommandPath())
			}
			return nil
		}
		c.RunE = func(cmd *cobra.Command, args []string) error {
			return usagef("%s needs a sub-command", cmd.CommandPath())
		}
	}
	for _, sub := range c.Commands() {
		setArgsRecursively(sub)
	}
}

// explain turns an API client error into one line saying what to do next.
func (a *app) explain(cmd *cobra.Command, err error) error {
	var ae *client.APIError
	if errors.As(err, &ae) {
		switch ae.Code {
		case api.CodeSetupRequired:
			return withHint(ae, "run 'agent-vault setup --email YOU@EXAMPLE.COM'")
		case api.CodeUnauthorized:
			if cmd.Name() == "login" || cmd.Name() == "setup" {
				return withHint(ae, "check the email and password and try again")
			}
			return withHint(ae, "run 'agent-vault login --email YOU@EXAMPLE.COM' (or set AGENT_VAULT_TOKEN)")
		case api.CodeSetupDone:
			return withHint(errors.New("setup is already done"), "log in with 'agent-vault login --email YOU@EXAMPLE.COM'")
		case api.CodeForbidden:
			return withHint(ae, "ask an owner for a role that allows it ('agent-vault user grant')")
		case api.CodeAgentToken:
			return withHint(ae, "this needs a human session: unset AGENT_VAULT_TOKEN and run 'agent-vault login'")
		case api.CodeStale:
			return withHint(ae, "run 'agent-vault proposal show ID' again, review the new content and approve with its hash")
		case api.CodeNotPending:
			return withHint(ae, "see its state with 'agent-vault proposal show ID'")
		case api.CodeLimit:
			return withHint(ae, "wait until a human approves or rejects the pending proposals")
		case api.CodeNotFound:
			return withHint(ae, "check the name with the matching 'list' command")
		case api.CodeExists:
			return withHint(ae, "choose another name, or delete the existing one first")
		case api.CodeInvalid, api.CodeBadRequest:
			return withHint(ae, "fix it and run the command again (see "+cmd.CommandPath()+" --help)")
		case api.CodeCAUnavailable, api.CodeRateLimited:
			return ae
		case api.CodeBadHost, api.CodeBadOrigin:
			return withHint(ae, "use --server http://127.0.0.1:PORT")
		}
		return withHint(ae, "see the server log")
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ne) || errors.Is(err, syscall.ECONNREFUSED) {
		return withHint(fmt.Errorf("cannot reach the agent-vault server at %s", a.serverURL()),
			"start it with 'agent-vault server', or point --server / AGENT_VAULT_ADDR at it")
	}
	return err
}
