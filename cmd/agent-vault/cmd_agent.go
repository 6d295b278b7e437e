package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/admin/client"
)

func (a *app) agentCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "agent", Short: "Create, list, revoke and delete agent identities"}
	var vault, cgroup string
	var sources []string
	var ttl time.Duration
	var asJSON bool
	create := &cobra.Command{
		Use:   "create --vault VAULT NAME [--source CIDR]... [--cgroup PATH]",
		Short: "Create an agent; prints its token once",
		Long: `Creates an agent identity in a vault and prints its token, once: the server
keeps only its SHA-256. The token authenticates the agent to the explicit proxy
(shape E: HTTPS_PROXY=http://agent:TOKEN@HOST:14322). --source binds the agent
to source addresses (shape G, gateway; repeatable), --cgroup to a cgroup below
the cgroup2 mount (shape L, local). Agent names are unique across vaults.`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := need(cmd, "vault"); err != nil {
				return err
			}
			req := api.AgentCreate{Name: args[0], Cgroup: cgroup}
			for _, s := range sources {
				p, err := netip.ParsePrefix(strings.TrimSpace(s))
				if err != nil {
					addr, aerr := netip.ParseAddr(strings.TrimSpace(s))
					if aerr != nil || addr.Zone() != "" {
						return usagef("--source %q: use a CIDR like 10.0.0.5/32 or an address (no zone)", s)
					}
					p = netip.PrefixFrom(addr, addr.BitLen())
				}
				req.Sources = append(req.Sources, p)
			}
			if ttl < 0 {
				return usagef("--ttl must not be negative")
			}
			if ttl > 0 {
				req.ExpiresAt = time.Now().Add(ttl)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			tok, err := c.CreateAgent(cmd.Context(), vault, req)
			if err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				return a.printJSON(tok)
			}
			fmt.Fprintf(a.stdout, "Agent %s created in vault %s. Its token (shown once, keep it safe):\n%s\n", tok.Name, tok.Vault, tok.Token)
			return nil
		},
	}
	create.Flags().StringVar(&vault, "vault", "", "the vault the agent may use")
	create.Flags().StringSliceVar(&sources, "source", nil, "source CIDR of the agent's traffic (shape G; repeatable)")
	create.Flags().StringVar(&cgroup, "cgroup", "", "the agent's cgroup, below the cgroup2 mount (shape L)")
	create.Flags().DurationVar(&ttl, "ttl", 0, "the agent expires after this long (default never)")

	list := &cobra.Command{
		Use:   "list [--vault VAULT]",
		Short: "List agents (of one vault, or of all)",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			as, err := c.Agents(cmd.Context(), vault)
			if err != nil {
				return a.explain(cmd, err)
			}
			now := time.Now()
			header := []string{"NAME", "VAULT", "STATE", "SOURCES", "CGROUP", "EXPIRES", "CREATED"}
			return printList(a, asJSON, as, header, func(ag api.Agent) []string {
				state := "active"
				if ag.Revoked {
					state = "revoked"
				} else if !ag.ExpiresAt.IsZero() && !now.Before(ag.ExpiresAt) {
					state = "expired"
				}
				var src []string
				for _, p := range ag.Sources {
					src = append(src, p.String())
				}
				return []string{ag.Name, ag.Vault, state, dash(strings.Join(src, ",")), dash(ag.Cgroup),
					fmtTime(ag.ExpiresAt), fmtTime(ag.CreatedAt)}
			})
		},
	}
	list.Flags().StringVar(&vault, "vault", "", "only this vault's agents")

	revoke := a.nameActionCmd(&asJSON, nameAction{
		use: "revoke", arg: "NAME", noun: "Agent", done: "revoked",
		short: "Revoke an agent (its live connections close within 1 s)",
		do: func(ctx context.Context, c *client.Client, _, name string) error {
			return c.RevokeAgent(ctx, name)
		},
	})
	del := a.nameActionCmd(&asJSON, nameAction{
		use: "delete", arg: "NAME", noun: "Agent", done: "deleted", short: "Delete an agent",
		do: func(ctx context.Context, c *client.Client, _, name string) error {
			return c.DeleteAgent(ctx, name)
		},
	})
	jsonFlag(&asJSON, create, list, revoke, del)
	cmd.AddCommand(create, list, revoke, del)
	return cmd
}
