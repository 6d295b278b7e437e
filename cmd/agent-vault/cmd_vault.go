package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/admin/client"
)

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func (a *app) vaultCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "vault", Short: "Create, list and delete vaults"}
	var asJSON bool
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a vault",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			v, err := c.CreateVault(cmd.Context(), args[0])
			if err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				return a.printJSON(v)
			}
			fmt.Fprintf(a.stdout, "Vault %s created.\n", v.Name)
			return nil
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List vaults",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			vs, err := c.Vaults(cmd.Context())
			if err != nil {
				return a.explain(cmd, err)
			}
			return printList(a, asJSON, vs, []string{"NAME", "CREATED", "BY"}, func(v api.Vault) []string {
				return []string{v.Name, fmtTime(v.CreatedAt), v.CreatedBy}
			})
		},
	}
	del := a.nameActionCmd(&asJSON, nameAction{
		use: "delete", arg: "NAME", noun: "Vault", done: "deleted",
		short: "Delete a vault with its credentials, services and agents",
		do: func(ctx context.Context, c *client.Client, _, name string) error {
			return c.DeleteVault(ctx, name)
		},
	})
	jsonFlag(&asJSON, create, list, del)
	cmd.AddCommand(create, list, del)
	return cmd
}

func (a *app) credentialCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "credential", Short: "Set, list and delete credentials (write-only)",
		Long: `Credentials are write-only: 'set' stores a value read from stdin (or a no-echo
prompt), and nothing ever returns it. 'list' shows names and times only.`}
	var vault string
	var asJSON bool
	set := &cobra.Command{
		Use:   "set --vault VAULT KEY",
		Short: "Store a credential's value, read from stdin or a no-echo prompt",
		Args:  exactArgs("KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := need(cmd, "vault"); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			val, err := a.readSecret("value of "+args[0], false)
			if err != nil {
				return err
			}
			cr, err := c.SetCredential(cmd.Context(), vault, args[0], val)
			clear(val)
			if err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				return a.printJSON(cr)
			}
			fmt.Fprintf(a.stdout, "Credential %s set in vault %s.\n", cr.Key, cr.Vault)
			return nil
		},
	}
	list := &cobra.Command{
		Use:   "list --vault VAULT",
		Short: "List a vault's credentials (names and timestamps only)",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := need(cmd, "vault"); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			cs, err := c.Credentials(cmd.Context(), vault)
			if err != nil {
				return a.explain(cmd, err)
			}
			return printList(a, asJSON, cs, []string{"KEY", "CREATED", "UPDATED", "BY", "STATE"}, func(cr api.Credential) []string {
				state := "ok"
				if cr.Undecryptable {
					state = "UNDECRYPTABLE: set it again"
				}
				return []string{cr.Key, fmtTime(cr.CreatedAt), fmtTime(cr.UpdatedAt), cr.UpdatedBy, state}
			})
		},
	}
	del := a.nameActionCmd(&asJSON, nameAction{
		use: "delete", arg: "KEY", vault: &vault, noun: "Credential", done: "deleted", short: "Delete a credential",
		do: func(ctx context.Context, c *client.Client, vault, key string) error {
			return c.DeleteCredential(ctx, vault, key)
		},
	})
	for _, c := range []*cobra.Command{set, list, del} {
		c.Flags().StringVar(&vault, "vault", "", "the vault")
	}
	jsonFlag(&asJSON, set, list, del)
	cmd.AddCommand(set, list, del)
	return cmd
}
