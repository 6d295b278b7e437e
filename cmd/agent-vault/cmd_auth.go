package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/admin/client"
)

// loginOutput is what setup and login print with --json (never the token:
// it stays in the session file).
type loginOutput struct {
	Email       string `json:"email"`
	Role        string `json:"role"`
	Server      string `json:"server"`
	ExpiresAt   string `json:"expires_at"`
	SessionFile string `json:"session_file"`
}

func (a *app) setupCmd() *cobra.Command {
	return a.loginLike("setup", "Create the first owner (password from stdin or a prompt) and log in",
		`Creates the appliance's first owner and logs in. The password (at least 8
characters) is read from stdin, or asked for twice without echo on a terminal.
Refused once an owner exists: use 'agent-vault login' then.`,
		func(ctx context.Context, c *client.Client, email, pw string) (api.SessionToken, error) {
			return c.Setup(ctx, email, pw)
		})
}

func (a *app) loginCmd() *cobra.Command {
	return a.loginLike("login", "Log in and save the session (password from stdin or a prompt)",
		`Logs in and saves the session token in a file of mode 0600 under your config
dir (agent-vault/session.json), keyed by server address. The password is read
from stdin, or asked for without echo on a terminal.`,
		func(ctx context.Context, c *client.Client, email, pw string) (api.SessionToken, error) {
			return c.Login(ctx, email, pw)
		})
}

func (a *app) loginLike(name, short, long string,
	do func(context.Context, *client.Client, string, string) (api.SessionToken, error)) *cobra.Command {
	var email string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   name + " --email EMAIL",
		Short: short,
		Long:  long,
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := need(cmd, "email"); err != nil {
				return err
			}
			c, err := client.New(a.serverURL())
			if err != nil {
				return usagef("%v", err)
			}
			pw, err := a.readSecret("password", name == "setup")
			if err != nil {
				return err
			}
			tok, err := do(cmd.Context(), c, email, string(pw))
			if err != nil {
				return a.explain(cmd, err)
			}
			path, err := a.saveSession(c.BaseURL(), savedSession{Token: tok.Token, Email: tok.Email, ExpiresAt: tok.ExpiresAt})
			if err != nil {
				return err
			}
			out := loginOutput{Email: tok.Email, Role: tok.Role, Server: c.BaseURL(),
				ExpiresAt: tok.ExpiresAt.Format("2006-01-02T15:04:05Z07:00"), SessionFile: path}
			if asJSON {
				return a.printJSON(out)
			}
			if name == "setup" {
				fmt.Fprintf(a.stdout, "Owner %s created and logged in to %s (session saved in %s).\n", out.Email, out.Server, path)
			} else {
				fmt.Fprintf(a.stdout, "Logged in to %s as %s until %s.\n", out.Server, out.Email, out.ExpiresAt)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&email, "email", "", "the owner's email address")
	jsonFlag(&asJSON, cmd)
	return cmd
}

func (a *app) logoutCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "logout",
		Short: "End the saved session",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			err = c.Logout(cmd.Context())
			// forget the local session even when the server already had
			if _, serr := a.saveSession(c.BaseURL(), savedSession{}); serr != nil {
				return serr
			}
			if err != nil && !client.IsCode(err, api.CodeUnauthorized) && !client.IsCode(err, api.CodeSetupRequired) {
				return a.explain(cmd, err)
			}
			fmt.Fprintln(a.stdout, "Logged out.")
			return nil
		},
	}
}
