package redirect

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// The tables Cleanup searches for our chains.
var cleanupTables = []string{"nat", "filter", "mangle", "raw"}

func newIPT(f Family) (*iptables.IPTables, error) {
	proto := iptables.ProtocolIPv4
	if f == IPv6 {
		proto = iptables.ProtocolIPv6
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(5))
	if err != nil {
		return nil, fmt.Errorf("open %s tables: %w", f, err)
	}
	return ipt, nil
}

// Apply installs a plan, idempotently: every chain of the plan is created if
// missing and its contents replaced by the plan's rules (new rules are first
// inserted at the top, then the old ones deleted, so there is no moment with
// an empty chain), then each jump rule is ensured to exist exactly once, at
// the top of its built-in chain. Applying the same plan twice, or after the
// previous process was killed, leaves the same rules. Chains of ours that
// the plan does not name are left alone (Cleanup removes them).
//
// Apply runs the iptables binaries in the caller's network namespace.
func Apply(p Plan) error {
	for _, f := range []Family{IPv4, IPv6} {
		if !p.has(f) {
			continue
		}
		ipt, err := newIPT(f)
		if err != nil {
			return err
		}
		for _, c := range p.Chains {
			if c.Family != f {
				continue
			}
			if err := replaceChain(ipt, c, p.rulesOf(c)); err != nil {
				return err
			}
		}
		for _, j := range p.Jumps {
			if j.Family != f {
				continue
			}
			if err := ensureJump(ipt, j); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p Plan) has(f Family) bool {
	for _, c := range p.Chains {
		if c.Family == f {
			return true
		}
	}
	return false
}

func (p Plan) rulesOf(c Chain) []Rule {
	var out []Rule
	for _, r := range p.Rules {
		if r.Family == c.Family && r.Table == c.Table && r.Chain == c.Name {
			out = append(out, r)
		}
	}
	return out
}

func replaceChain(ipt *iptables.IPTables, c Chain, rules []Rule) error {
	if !strings.HasPrefix(c.Name, ChainPrefix) {
		return fmt.Errorf("refusing to manage chain %s: not ours", c.Name)
	}
	exists, err := ipt.ChainExists(c.Table, c.Name)
	if err != nil {
		return fmt.Errorf("check %s %s %s: %w", c.Family, c.Table, c.Name, err)
	}
	old := 0
	if exists {
		lines, err := ipt.List(c.Table, c.Name)
		if err != nil {
			return fmt.Errorf("list %s %s %s: %w", c.Family, c.Table, c.Name, err)
		}
		for _, l := range lines {
			if strings.HasPrefix(l, "-A ") {
				old++
			}
		}
	} else if err := ipt.NewChain(c.Table, c.Name); err != nil {
		return fmt.Errorf("create %s %s %s: %w", c.Family, c.Table, c.Name, err)
	}
	for i, r := range rules {
		if err := ipt.Insert(c.Table, c.Name, i+1, r.Spec...); err != nil {
			return fmt.Errorf("insert into %s %s %s %q: %w", c.Family, c.Table, c.Name, strings.Join(r.Spec, " "), err)
		}
	}
	for i := 0; i < old; i++ {
		if err := ipt.DeleteById(c.Table, c.Name, len(rules)+1); err != nil {
			return fmt.Errorf("delete old rule of %s %s %s: %w", c.Family, c.Table, c.Name, err)
		}
	}
	return nil
}

func ensureJump(ipt *iptables.IPTables, j Rule) error {
	want := "-A " + j.Chain + " " + strings.Join(j.Spec, " ")
	lines, err := ipt.List(j.Table, j.Chain)
	if err != nil {
		return fmt.Errorf("list %s %s %s: %w", j.Family, j.Table, j.Chain, err)
	}
	var at []int // rule numbers (1-based) of our jump
	n := 0
	for _, l := range lines {
		if !strings.HasPrefix(l, "-A ") {
			continue
		}
		n++
		if l == want {
			at = append(at, n)
		}
	}
	if len(at) == 0 || at[0] != 1 {
		// Insert first, then remove the others: never a moment without it.
		if err := ipt.Insert(j.Table, j.Chain, 1, j.Spec...); err != nil {
			return fmt.Errorf("insert jump %s %s %q: %w", j.Family, j.Table, want, err)
		}
		for i := range at {
			at[i]++
		}
	} else {
		at = at[1:]
	}
	for i := len(at) - 1; i >= 0; i-- {
		if err := ipt.DeleteById(j.Table, j.Chain, at[i]); err != nil {
			return fmt.Errorf("delete extra jump %s %s %q: %w", j.Family, j.Table, want, err)
		}
	}
	return nil
}

// Cleanup removes every chain whose name starts with ChainPrefix, and every
// rule jumping to one, in the nat, filter, mangle and raw tables of both
// families, and nothing else. It is what --cleanup and the start of a run
// call; it succeeds when there is nothing to remove. A family whose
// iptables binary is missing is skipped (nothing of ours can be there).
func Cleanup() error { return CleanupExcept(Plan{}) }

// CleanupExcept is Cleanup sparing the chains of keep (and the jumps to
// them): at start, a mode that is about to re-Apply the same chains keeps
// the previous run's rules (fail closed) and only removes the rest.
func CleanupExcept(keep Plan) error {
	var errs []error
	for _, f := range []Family{IPv4, IPv6} {
		ipt, err := newIPT(f)
		if err != nil {
			if errors.Is(err, exec.ErrNotFound) {
				continue
			}
			errs = append(errs, err)
			continue
		}
		for _, table := range cleanupTables {
			if err := cleanupTable(ipt, f, table, keep); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (p Plan) hasChain(f Family, table, name string) bool {
	for _, c := range p.Chains {
		if c.Family == f && c.Table == table && c.Name == name {
			return true
		}
	}
	return false
}

func cleanupTable(ipt *iptables.IPTables, f Family, table string, keep Plan) error {
	chains, err := ipt.ListChains(table)
	if err != nil {
		// A table the kernel does not offer holds nothing of ours.
		return nil
	}
	var ours []string
	for _, c := range chains {
		if strings.HasPrefix(c, ChainPrefix) && !keep.hasChain(f, table, c) {
			ours = append(ours, c)
		}
	}
	if len(ours) == 0 {
		return nil
	}
	// First every rule, in any chain, that jumps to one of ours.
	for _, c := range chains {
		lines, err := ipt.List(table, c)
		if err != nil {
			return fmt.Errorf("list %s %s %s: %w", f, table, c, err)
		}
		for _, l := range lines {
			args, ok := jumpToOurs(l, c)
			if !ok || keep.hasChain(f, table, args[len(args)-1]) {
				continue
			}
			if err := ipt.Delete(table, c, args...); err != nil {
				return fmt.Errorf("delete jump %s %s %q: %w", f, table, l, err)
			}
		}
	}
	for _, c := range ours {
		if err := ipt.ClearAndDeleteChain(table, c); err != nil {
			return fmt.Errorf("delete chain %s %s %s: %w", f, table, c, err)
		}
	}
	return nil
}

// jumpToOurs parses one line of `iptables -S CHAIN` and returns the rule's
// spec when it jumps (or goes) to one of our chains.
func jumpToOurs(line, chain string) ([]string, bool) {
	fields := splitRule(line)
	if len(fields) < 4 || fields[0] != "-A" || fields[1] != chain {
		return nil, false
	}
	spec := fields[2:]
	for i := 0; i+1 < len(spec); i++ {
		if (spec[i] == "-j" || spec[i] == "-g") && strings.HasPrefix(spec[i+1], ChainPrefix) {
			return spec, true
		}
	}
	return nil, false
}

// splitRule splits an iptables-save line into arguments, honouring the
// double quotes iptables puts around arguments with spaces.
func splitRule(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '\\' && inQuote && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case ch == '"':
			inQuote = !inQuote
			have = true
		case ch == ' ' && !inQuote:
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(ch)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// RemovePlan removes the jump rules and the chains of one plan, and nothing
// else (Local.Close uses it for its backstop).
func RemovePlan(p Plan) error {
	var errs []error
	for _, f := range []Family{IPv4, IPv6} {
		if !p.has(f) {
			continue
		}
		ipt, err := newIPT(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, j := range p.Jumps {
			if j.Family != f {
				continue
			}
			for i := 0; i < 16; i++ { // bounded: duplicates are few
				ok, err := ipt.Exists(j.Table, j.Chain, j.Spec...)
				if err != nil {
					errs = append(errs, fmt.Errorf("check jump %s %s %s: %w", f, j.Table, j.Chain, err))
					break
				}
				if !ok {
					break
				}
				if err := ipt.Delete(j.Table, j.Chain, j.Spec...); err != nil {
					errs = append(errs, fmt.Errorf("delete jump %s %s %s: %w", f, j.Table, j.Chain, err))
					break
				}
			}
		}
		for _, c := range p.Chains {
			if c.Family != f {
				continue
			}
			ok, err := ipt.ChainExists(c.Table, c.Name)
			if err == nil && ok {
				err = ipt.ClearAndDeleteChain(c.Table, c.Name)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("delete chain %s %s %s: %w", f, c.Table, c.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}
