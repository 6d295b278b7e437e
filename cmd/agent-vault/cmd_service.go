package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/admin/client"
	"github.com/agentvault/agent-vault/policy"
)

func (a *app) serviceCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "service", Short: "Add, list and delete services (allowed destinations and how to authenticate)"}
	var vault string
	var asJSON bool
	var svc policy.Service
	var sf serviceFlags
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
			sf.apply(&svc, vault)
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
	sf.bind(add.Flags(), &svc, "the credential's key in the vault",
		"the string agents send instead of the secret (auth placeholder)")

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
			header := []string{"NAME", "HOST", "PORT", "PATH", "METHODS", "AUTH", "CREDENTIAL"}
			return printList(a, asJSON, ss, header, func(s api.Service) []string {
				port := "any"
				if s.Port != 0 {
					port = strconv.Itoa(s.Port)
				}
				return []string{s.Name, s.Host, port, dash(s.Path), dash(strings.Join(s.Methods, ",")),
					string(s.Auth.Kind), dash(s.Auth.Credential)}
			})
		},
	}
	del := a.nameActionCmd(&asJSON, nameAction{
		use: "delete", arg: "NAME", vault: &vault, noun: "Service", done: "deleted", short: "Delete a service",
		do: func(ctx context.Context, c *client.Client, vault, name string) error {
			return c.DeleteService(ctx, vault, name)
		},
	})
	for _, c := range []*cobra.Command{add, list, del} {
		c.Flags().StringVar(&vault, "vault", "", "the vault")
	}
	jsonFlag(&asJSON, add, list, del)
	cmd.AddCommand(add, list, del)
	return cmd
}

// serviceFlags are the flags that describe a service, shared by 'service
// add' and 'proposal create'.
type serviceFlags struct {
	kind string   // --auth
	in   []string // --in
}

// bind adds the service flags to f, filling svc (its auth kind and
// locations through apply); the usage of --credential and --placeholder
// differs between a service and a proposal.
func (sf *serviceFlags) bind(f *pflag.FlagSet, svc *policy.Service, credentialUsage, placeholderUsage string) {
	f.StringVar(&svc.Name, "name", "", "the service's name (unique in the vault)")
	f.StringVar(&svc.Host, "host", "", "host name or *.wildcard the service covers")
	f.IntVar(&svc.Port, "port", 0, "only this destination port (default any)")
	f.StringVar(&svc.Path, "path", "", "only paths below this prefix (like /v1)")
	f.StringSliceVar(&svc.Methods, "method", nil, "only these HTTP methods (comma-separated or repeated)")
	f.StringVar(&sf.kind, "auth", "", "bearer, header, basic, placeholder or none")
	f.StringVar(&svc.Auth.Credential, "credential", "", credentialUsage)
	f.StringVar(&svc.Auth.Header, "header", "", "header name (auth header, or placeholder --in header)")
	f.StringVar(&svc.Auth.Prefix, "prefix", "", "text before the credential in the header (auth header)")
	f.StringVar(&svc.Auth.Username, "username", "", "user name (auth basic)")
	f.StringVar(&svc.Auth.Placeholder, "placeholder", "", placeholderUsage)
	f.StringSliceVar(&sf.in, "in", nil, "where the placeholder may be swapped: path, query, header, body")
	f.StringSliceVar(&svc.Auth.BodyFields, "body-field", nil, "with --in body: only these JSON/form fields")
}

// apply sets svc's vault, and its auth kind and locations from the flags.
func (sf *serviceFlags) apply(svc *policy.Service, vault string) {
	svc.Vault = vault
	svc.Auth.Kind = policy.AuthKind(sf.kind)
	svc.Auth.In = nil
	for _, l := range sf.in {
		svc.Auth.In = append(svc.Auth.In, policy.Location(strings.TrimSpace(l)))
	}
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
