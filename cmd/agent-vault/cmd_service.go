package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/agentvault/agent-vault/policy"
)

func (a *app) serviceCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "service", Short: "Add, list and delete services (allowed destinations and how to authenticate)"}
	var vault string
	var asJSON bool
	var svc policy.Service
	var kind string
	var in []string
	add := &cobra.Command{
		Use:   "add --vault V --name N --host PATTERN --auth KIND [--credential KEY] [flags]",
		Short: "Allow a destination and say how the broker authenticates to it",
		Long: `Adds a service to a vault: an allowed destination and how the broker
authenticates to it.

  --host     an exact name (api.example.com) or a wildcard (*.example.com, any
             name strictly below example.com)
  --port     only this port (default: any); --path only below this prefix;
             --method only these methods (GET,POST)
  --auth     bearer       Authorization: Bearer <credential>
             header       --header NAME [--prefix STR]: NAME: STR<credential>
             basic        --username VALUE: Basic auth, password = the credential
             placeholder  --placeholder STR --in path,query,header,body: the
                          agent's STR is swapped for the credential there only
                          (header: the one named by --header; body: JSON or form
                          values, narrowed by --body-field)
             none         allow without injecting anything
  --credential  the credential's key in the same vault (not with none)`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := need(cmd, "vault", "name", "host", "auth"); err != nil {
				return err
			}
			svc.Vault = vault
			svc.Auth.Kind = policy.AuthKind(kind)
			svc.Auth.In = nil
			for _, l := range in {
				svc.Auth.In = append(svc.Auth.In, policy.Location(strings.TrimSpace(l)))
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			out, err := c.AddService(cmd.Context(), svc)
			if err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				return a.printJSON(out)
			}
			fmt.Fprintf(a.stdout, "Service %s added to vault %s: %s, auth %s.\n", out.Name, out.Vault, describeTarget(out), out.Auth.Kind)
			return nil
		},
	}
	f := add.Flags()
	f.StringVar(&svc.Name, "name", "", "the service's name (unique in the vault)")
	f.StringVar(&svc.Host, "host", "", "host name or *.wildcard the service covers")
	f.IntVar(&svc.Port, "port", 0, "only this destination port (default any)")
	f.StringVar(&svc.Path, "path", "", "only paths below this prefix (like /v1)")
	f.StringSliceVar(&svc.Methods, "method", nil, "only these HTTP methods (comma-separated or repeated)")
	f.StringVar(&kind, "auth", "", "bearer, header, basic, placeholder or none")
	f.StringVar(&svc.Auth.Credential, "credential", "", "the credential's key in the vault")
	f.StringVar(&svc.Auth.Header, "header", "", "header name (auth header, or placeholder --in header)")
	f.StringVar(&svc.Auth.Prefix, "prefix", "", "text before the credential in the header (auth header)")
	f.StringVar(&svc.Auth.Username, "username", "", "user name (auth basic)")
	f.StringVar(&svc.Auth.Placeholder, "placeholder", "", "the string agents send instead of the secret (auth placeholder)")
	f.StringSliceVar(&in, "in", nil, "where the placeholder may be swapped: path, query, header, body")
	f.StringSliceVar(&svc.Auth.BodyFields, "body-field", nil, "with --in body: only these JSON/form fields")

	list := &cobra.Command{
		Use:   "list --vault VAULT",
		Short: "List a vault's services",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := need(cmd, "vault"); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ss, err := c.Services(cmd.Context(), vault)
			if err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				return a.printJSON(ss)
			}
			rows := [][]string{{"NAME", "HOST", "PORT", "PATH", "METHODS", "AUTH", "CREDENTIAL"}}
			for _, s := range ss {
				port := "any"
				if s.Port != 0 {
					port = strconv.Itoa(s.Port)
				}
				rows = append(rows, []string{s.Name, s.Host, port, dash(s.Path), dash(strings.Join(s.Methods, ",")),
					string(s.Auth.Kind), dash(s.Auth.Credential)})
			}
			return a.table(rows)
		},
	}
	del := &cobra.Command{
		Use:   "delete --vault VAULT NAME",
		Short: "Delete a service",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := need(cmd, "vault"); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			if err := c.DeleteService(cmd.Context(), vault, args[0]); err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				return a.printJSON(map[string]string{"deleted": args[0], "vault": vault})
			}
			fmt.Fprintf(a.stdout, "Service %s deleted from vault %s.\n", args[0], vault)
			return nil
		},
	}
	for _, c := range []*cobra.Command{add, list, del} {
		c.Flags().StringVar(&vault, "vault", "", "the vault")
		c.Flags().BoolVar(&asJSON, "json", false, "print one JSON document")
	}
	cmd.AddCommand(add, list, del)
	return cmd
}

func describeTarget(s policy.Service) string {
	t := s.Host
	if s.Port != 0 {
		t += ":" + strconv.Itoa(s.Port)
	}
	t += s.Path
	if len(s.Methods) > 0 {
		t += " (" + strings.Join(s.Methods, ",") + ")"
	}
	return t
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
