package main

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/policy"
)

// clean makes text an agent supplied safe to print on a terminal: control
// characters become '?'.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\n' && r != '\t' || r == 0x7f || r >= 0x80 && r < 0xa0 || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}

func parseID(s string) (uint64, error) {
	id, err := strconv.ParseUint(strings.TrimPrefix(s, "#"), 10, 64)
	if err != nil || id == 0 {
		return 0, usagef("proposal id %q: use the number 'proposal list' shows", s)
	}
	return id, nil
}

func (a *app) proposalCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "proposal", Short: "Agents propose services; humans review, approve or reject them"}
	var asJSON bool
	var vault string

	var req api.ProposalCreate
	var sf serviceFlags
	create := &cobra.Command{
		Use:   "create [--vault V] --name N --host PATTERN --auth KIND [--credential KEY] [service flags] --reason TEXT",
		Short: "Propose a service (run with an agent token in AGENT_VAULT_TOKEN)",
		Long: `Asks a human for access to a service, run as an agent: AGENT_VAULT_TOKEN holds
the agent's token (the one 'agent create' printed). The flags are those of
'service add'; --credential names the credential slot a human fills when
approving. --reason says why. --vault defaults to the agent's vault.

Proposing again with the same --name while the earlier proposal is pending
replaces it (its content hash changes, so a human who reviewed the old content
must look again). Prints the proposal id.`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := need(cmd, "name", "host", "auth", "reason"); err != nil {
				return err
			}
			sf.apply(&req.Service, vault)
			c, err := a.client()
			if err != nil {
				return err
			}
			p, err := c.CreateProposal(cmd.Context(), req)
			if err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				return a.printJSON(p)
			}
			verb := "created"
			if p.Revision > 1 {
				verb = fmt.Sprintf("updated (revision %d)", p.Revision)
			}
			fmt.Fprintf(a.stdout, "Proposal %d %s for vault %s: service %s (%s), pending until %s.\n",
				p.ID, verb, p.Vault, p.Service.Name, p.Service.Host, fmtTime(p.ExpiresAt))
			return nil
		},
	}
	sf.bind(create.Flags(), &req.Service, "the credential slot a human fills (its key in the vault)",
		"the string the agent sends instead of the secret (auth placeholder)")
	create.Flags().StringVar(&req.Reason, "reason", "", "why the agent needs this service")

	var filter api.ProposalFilter
	list := &cobra.Command{
		Use:   "list [--vault V] [--state pending|approved|rejected|expired] [--agent A]",
		Short: "List proposals, newest first (an agent token lists its own)",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			filter.Vault = vault
			switch filter.State {
			case "", "pending", "approved", "rejected", "expired":
			default:
				return usagef("--state must be pending, approved, rejected or expired")
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ps, err := c.Proposals(cmd.Context(), filter)
			if err != nil {
				return a.explain(cmd, err)
			}
			header := []string{"ID", "STATE", "VAULT", "AGENT", "SERVICE", "HOST", "AUTH", "CREDENTIAL", "CREATED"}
			return printList(a, asJSON, ps, header, func(p api.Proposal) []string {
				return []string{strconv.FormatUint(p.ID, 10), p.State, p.Vault, p.Agent, clean(p.Service.Name),
					clean(describeTarget(p.Service)), string(p.Service.Auth.Kind), dash(p.Service.Auth.Credential), fmtTime(p.CreatedAt)}
			})
		},
	}
	list.Flags().StringVar(&filter.State, "state", "", "only proposals in this state")
	list.Flags().StringVar(&filter.Agent, "agent", "", "only this agent's proposals")

	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show a proposal's full content and its content hash",
		Long: `Shows everything a proposal asks for, and its content hash. Approving sends the
hash back ('proposal approve ID --hash HASH'), so what is approved is exactly
what was shown: if the agent changes the proposal in between, the approval is
refused and the proposal must be reviewed again.`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			p, err := c.Proposal(cmd.Context(), id)
			if err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				return a.printJSON(p)
			}
			a.printProposal(p)
			return nil
		},
	}

	var ap api.ProposalApprove
	var noValue bool
	approve := &cobra.Command{
		Use:   "approve ID --hash HASH [--credential KEY] [--no-value]",
		Short: "Apply a proposal: add its service and fill its credential (value from stdin)",
		Long: `Approves a proposal as shown by 'proposal show ID': --hash must be the content
hash printed there. In one transaction the credential is stored and the service
added. The credential's value is read from stdin (or a no-echo prompt on a
terminal), never from the command line. --credential fills another key instead
of the requested slot; --no-value uses a credential that already exists.`,
		Args: exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			if ap.Hash == "" {
				return usagef("%s needs --hash: run 'agent-vault proposal show %d', review it, and pass the content hash it prints", cmd.CommandPath(), id)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			p, err := c.Proposal(cmd.Context(), id)
			if err != nil {
				return a.explain(cmd, err)
			}
			if p.Service.Auth.Kind != policy.AuthNone && !noValue {
				v, err := a.readSecret("credential value", false)
				if err != nil {
					return withHint(err, "pipe the value in, or pass --no-value to use an existing credential")
				}
				ap.Value = string(v)
				defer func() { ap.Value = "" }()
			}
			out, err := c.ApproveProposal(cmd.Context(), id, ap)
			if err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				return a.printJSON(out)
			}
			fmt.Fprintf(a.stdout, "Proposal %d approved: service %s added to vault %s", out.ID, clean(out.Service.Name), out.Vault)
			if out.Credential != "" {
				fmt.Fprintf(a.stdout, " with credential %s", out.Credential)
			}
			fmt.Fprintln(a.stdout, ".")
			return nil
		},
	}
	approve.Flags().StringVar(&ap.Hash, "hash", "", "the content hash 'proposal show' printed (required)")
	approve.Flags().StringVar(&ap.Credential, "credential", "", "fill this credential key instead of the requested slot")
	approve.Flags().BoolVar(&noValue, "no-value", false, "read no value: use the credential that already exists")

	var rj api.ProposalReject
	reject := &cobra.Command{
		Use:   "reject ID [--hash HASH] [--reason TEXT]",
		Short: "Reject a proposal",
		Args:  exactArgs("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			out, err := c.RejectProposal(cmd.Context(), id, rj)
			if err != nil {
				return a.explain(cmd, err)
			}
			if asJSON {
				return a.printJSON(out)
			}
			fmt.Fprintf(a.stdout, "Proposal %d rejected.\n", out.ID)
			return nil
		},
	}
	reject.Flags().StringVar(&rj.Hash, "hash", "", "refuse if the proposal changed since it showed this hash")
	reject.Flags().StringVar(&rj.Reason, "reason", "", "why (recorded with the proposal)")

	jsonFlag(&asJSON, create, list, show, approve, reject)
	create.Flags().StringVar(&vault, "vault", "", "the vault (default: the agent's)")
	list.Flags().StringVar(&vault, "vault", "", "only this vault")
	cmd.AddCommand(create, list, show, approve, reject)
	return cmd
}

func (a *app) printProposal(p api.Proposal) {
	s := p.Service
	w := a.stdout
	fmt.Fprintf(w, "Proposal %d: %s (revision %d), vault %s, proposed by agent %s\n", p.ID, p.State, p.Revision, p.Vault, p.Agent)
	fmt.Fprintf(w, "  service:     %s\n", clean(s.Name))
	fmt.Fprintf(w, "  host:        %s\n", clean(s.Host))
	port := "any"
	if s.Port != 0 {
		port = strconv.Itoa(s.Port)
	}
	fmt.Fprintf(w, "  port:        %s\n", port)
	fmt.Fprintf(w, "  path:        %s\n", dash(clean(s.Path)))
	fmt.Fprintf(w, "  methods:     %s\n", dash(strings.Join(s.Methods, ",")))
	fmt.Fprintf(w, "  auth:        %s\n", s.Auth.Kind)
	if s.Auth.Credential != "" {
		fmt.Fprintf(w, "  credential:  %s (the slot you fill)\n", s.Auth.Credential)
	}
	for _, kv := range [][2]string{{"header", s.Auth.Header}, {"prefix", strconv.Quote(s.Auth.Prefix)}, {"username", s.Auth.Username},
		{"placeholder", s.Auth.Placeholder}} {
		if kv[1] != "" && kv[1] != `""` {
			fmt.Fprintf(w, "  %-12s %s\n", kv[0]+":", clean(kv[1]))
		}
	}
	if len(s.Auth.In) > 0 {
		var in []string
		for _, l := range s.Auth.In {
			in = append(in, string(l))
		}
		fmt.Fprintf(w, "  in:          %s\n", strings.Join(in, ","))
	}
	if len(s.Auth.BodyFields) > 0 {
		fmt.Fprintf(w, "  body fields: %s\n", clean(strings.Join(s.Auth.BodyFields, ",")))
	}
	fmt.Fprintf(w, "  reason:      %s\n", strings.ReplaceAll(clean(p.Reason), "\n", "\n               "))
	fmt.Fprintf(w, "  created:     %s, updated %s, expires %s\n", fmtTime(p.CreatedAt), fmtTime(p.UpdatedAt), fmtTime(p.ExpiresAt))
	if !p.DecidedAt.IsZero() {
		fmt.Fprintf(w, "  decided:     %s by %s", fmtTime(p.DecidedAt), dash(p.DecidedBy))
		if p.Note != "" {
			fmt.Fprintf(w, " (%s)", clean(p.Note))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "Content hash: %s\n", p.Hash)
	if p.State == "pending" {
		fmt.Fprintf(w, "Approve this exact content with: agent-vault proposal approve %d --hash %s  (the credential value on stdin)\n", p.ID, p.Hash)
	}
}
