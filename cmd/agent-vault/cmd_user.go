package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/admin/client"
)

func (a *app) userCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "user", Short: "Invite users, give them roles, list and remove them (owner)"}
	var asJSON bool
	var email, role, vault string

	invite := &cobra.Command{
		Use:   "invite --email E --role owner|admin|approver|viewer [--vault V]",
		Short: "Invite a user; prints a one-time invite token",
		Long: `Invites a user and prints a one-time invite token (valid 72 h; the server keeps
only its SHA-256). Give it to the user over a safe channel: they run
'agent-vault user accept', which reads the token and then a password of their
choice, and are logged in. Nobody else ever knows their password.

Roles: owner (everything, instance-wide), admin (changes vaults' contents),
approver (decides proposals, reads the audit log), viewer (reads). Without
--vault the role applies to every vault; with --vault only to that vault
(owner is instance-wide only).`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := need(cmd, "email", "role"); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			inv, err := c.InviteUser(cmd.Context(), api.UserInvite{Email: email, Role: role, Vault: vault})
			if err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				return a.printJSON(inv)
			}
			fmt.Fprintf(a.stdout, "Invited %s as %s. Their invite token (shown once, valid until %s):\n%s\n"+
				"They run: agent-vault user accept --server %s   (token, then a new password, on stdin or at the prompts)\n",
				inv.Account.Email, describeRoles(inv.Account), fmtTime(inv.ExpiresAt), inv.InviteToken, c.BaseURL())
			return nil
		},
	}
	invite.Flags().StringVar(&email, "email", "", "the user's email address")
	invite.Flags().StringVar(&role, "role", "", "owner, admin, approver or viewer")
	invite.Flags().StringVar(&vault, "vault", "", "give the role in this vault only")

	accept := &cobra.Command{
		Use:   "accept",
		Short: "Accept an invite: read the invite token and a new password, then log in",
		Long: `Accepts an invite: reads the invite token, then the password to set (at least
8 characters), and saves the session like 'login'. On a terminal both are asked
for without echo (the password twice); otherwise stdin holds the token on the
first line and the password on the second.`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := client.New(a.serverURL())
			if err != nil {
				return usagef("%v", err)
			}
			tok, pw, err := a.readInvite()
			if err != nil {
				return err
			}
			st, err := c.AcceptInvite(cmd.Context(), string(tok), string(pw))
			if err != nil {
				if client.IsCode(err, api.CodeUnauthorized) {
					return withHint(err, "ask the owner for a new invite")
				}
				return a.explain(cmd, err)
			}
			path, err := a.saveSession(c.BaseURL(), savedSession{Token: st.Token, Email: st.Email, ExpiresAt: st.ExpiresAt})
			if err != nil {
				return err
			}
			if asJSON {
				return a.printJSON(loginOutput{Email: st.Email, Role: st.Role, Server: c.BaseURL(),
					ExpiresAt: st.ExpiresAt.Format("2006-01-02T15:04:05Z07:00"), SessionFile: path})
			}
			fmt.Fprintf(a.stdout, "Welcome, %s: your password is set and you are logged in to %s.\n", st.Email, c.BaseURL())
			return nil
		},
	}

	list := &cobra.Command{
		Use:   "list",
		Short: "List users and their roles",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			us, err := c.Users(cmd.Context())
			if err != nil {
				return a.explain(cmd, err)
			}
			return printList(a, asJSON, us, []string{"EMAIL", "ROLES", "STATE", "CREATED"}, func(u api.Account) []string {
				state := "active"
				if u.Invited {
					state = "invited until " + fmtTime(u.InviteExpiresAt)
				}
				return []string{u.Email, describeRoles(u), state, fmtTime(u.CreatedAt)}
			})
		},
	}

	grant := &cobra.Command{
		Use:   "grant EMAIL --role owner|admin|approver|viewer|none [--vault V]",
		Short: "Set a user's role (instance-wide, or in one vault); none removes it",
		Args:  exactArgs("EMAIL"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := need(cmd, "role"); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			acc, err := c.GrantRole(cmd.Context(), args[0], api.RoleGrant{Role: role, Vault: vault})
			if err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				return a.printJSON(acc)
			}
			fmt.Fprintf(a.stdout, "%s now has: %s.\n", acc.Email, describeRoles(acc))
			return nil
		},
	}
	grant.Flags().StringVar(&role, "role", "", "owner, admin, approver, viewer, or none to remove")
	grant.Flags().StringVar(&vault, "vault", "", "the role applies in this vault only")

	remove := a.nameActionCmd(&asJSON, nameAction{
		use: "remove", arg: "EMAIL", noun: "User", done: "removed",
		short: "Remove a user and end their sessions",
		do: func(ctx context.Context, c *client.Client, _, email string) error {
			return c.RemoveUser(ctx, email)
		},
	})
	jsonFlag(&asJSON, invite, accept, list, grant, remove)
	cmd.AddCommand(invite, accept, list, grant, remove)
	return cmd
}

// describeRoles renders "owner" or "viewer; admin in prod".
func describeRoles(u api.Account) string {
	var parts []string
	if u.Role != "" {
		parts = append(parts, u.Role)
	}
	vaults := make([]string, 0, len(u.VaultRoles))
	for v := range u.VaultRoles {
		vaults = append(vaults, v)
	}
	sort.Strings(vaults)
	for _, v := range vaults {
		parts = append(parts, u.VaultRoles[v]+" in "+v)
	}
	if len(parts) == 0 {
		return "no role"
	}
	return strings.Join(parts, "; ")
}

// readInvite reads the invite token and the new password: prompts on a
// terminal, else two lines of stdin.
func (a *app) readInvite() (tok, pw []byte, err error) {
	if fd, ok := a.stdinTerminal(); ok {
		fmt.Fprint(a.stderr, "invite token: ")
		tok, err = term.ReadPassword(fd)
		fmt.Fprintln(a.stderr)
		if err != nil {
			return nil, nil, fmt.Errorf("read the invite token from the terminal: %w", err)
		}
		tok = bytes.TrimSpace(tok)
		pw, err = a.readSecret("new password", true)
		return tok, pw, err
	}
	in, err := io.ReadAll(io.LimitReader(a.stdin, maxSecretInput+1))
	if err != nil {
		return nil, nil, fmt.Errorf("read stdin: %w", err)
	}
	if len(in) > maxSecretInput {
		return nil, nil, fmt.Errorf("stdin is longer than %d bytes", maxSecretInput)
	}
	first, rest, _ := bytes.Cut(in, []byte("\n"))
	tok = bytes.TrimSpace(first)
	pw = bytes.TrimRight(rest, "\r\n")
	if len(tok) == 0 || len(pw) == 0 {
		return nil, nil, withHint(fmt.Errorf("stdin must hold the invite token and the new password, one per line"),
			"e.g. printf '%%s\\n%%s\\n' \"$TOKEN\" \"$PASSWORD\" | agent-vault user accept")
	}
	return tok, pw, nil
}

func (a *app) whoamiCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Say who the session (or AGENT_VAULT_TOKEN) belongs to",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			w, err := c.WhoAmI(cmd.Context())
			if err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				return a.printJSON(w)
			}
			if w.Kind == "agent" {
				fmt.Fprintf(a.stdout, "Agent %s of vault %s.\n", w.Agent, w.Vault)
				return nil
			}
			fmt.Fprintf(a.stdout, "%s (%s), session until %s.\n", w.Email,
				describeRoles(api.Account{Role: w.Role, VaultRoles: w.VaultRoles}), fmtTime(w.ExpiresAt))
			return nil
		},
	}
	jsonFlag(&asJSON, cmd)
	return cmd
}
