package redirect

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create it): %v", err)
	}
	if string(want) != got {
		t.Errorf("plan differs from %s (run with -update if intended)\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func TestGatewayPlanGolden(t *testing.T) {
	cases := map[string]GatewayConfig{
		"gateway_dualstack": {Ifaces: []string{"agent0"}, TransparentPort: 14323, DNSPort: 14353, AdminPort: 14321, IPv6: true},
		"gateway_v4only":    {Ifaces: []string{"agent0", "vm+"}, TransparentPort: 14323, DNSPort: 14353, AdminPort: 14321},
	}
	for name, cfg := range cases {
		t.Run(name, func(t *testing.T) {
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			golden(t, name, GatewayPlan(cfg).String())
		})
	}
}

func TestLocalBackstopPlanGolden(t *testing.T) {
	cfg := BackstopConfig{
		CgroupPath:   "/agent-vault.agents",
		Transparent4: netip.MustParseAddrPort("127.0.0.1:14323"),
		Transparent6: netip.MustParseAddrPort("[::1]:14323"),
		DNS4:         netip.MustParseAddrPort("127.0.0.1:14353"),
	}
	golden(t, "local_backstop", LocalBackstopPlan(cfg).String())
}

// Every plan keeps to our own chains, jumps once per built-in chain, and
// ends each filter chain of gateway mode in a drop for the agents' traffic.
func TestGatewayPlanInvariants(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		p := GatewayPlan(GatewayConfig{Ifaces: []string{"a0", "a1"}, TransparentPort: 1, DNSPort: 2, AdminPort: 3, IPv6: v6})
		seen := map[string]bool{}
		for _, j := range p.Jumps {
			key := j.Family.String() + j.Table + j.Chain
			if seen[key] {
				t.Errorf("two jumps from %s", key)
			}
			seen[key] = true
			if len(j.Spec) != 2 || !strings.HasPrefix(j.Spec[1], ChainPrefix) {
				t.Errorf("jump %v is not a bare jump to our chain", j.Spec)
			}
		}
		for _, r := range p.Rules {
			if !strings.HasPrefix(r.Chain, ChainPrefix) {
				t.Errorf("rule into foreign chain %s", r.Chain)
			}
		}
		for _, c := range p.Chains {
			rules := p.rulesOf(c)
			if c.Table != "filter" || len(rules) == 0 {
				continue
			}
			last := strings.Join(rules[len(rules)-1].Spec, " ")
			if !strings.Contains(last, "-j DROP") && !strings.Contains(last, "-j REJECT") {
				t.Errorf("v6=%v %s %s ends in %q, not a drop", v6, c.Family, c.Name, last)
			}
		}
		if !v6 {
			for _, r := range p.Rules {
				if r.Family == IPv6 && r.Table == "nat" {
					t.Errorf("v6 disabled but a v6 redirect is planned: %v", r.Spec)
				}
			}
		}
	}
}

func TestGatewayConfigValidate(t *testing.T) {
	bad := []GatewayConfig{
		{TransparentPort: 1, DNSPort: 2},
		{Ifaces: []string{"eth0 -j ACCEPT"}, TransparentPort: 1, DNSPort: 2},
		{Ifaces: []string{"eth0"}, TransparentPort: 0, DNSPort: 2},
		{Ifaces: []string{"eth0"}, TransparentPort: 1, DNSPort: 70000},
	}
	for _, c := range bad {
		if c.Validate() == nil {
			t.Errorf("Validate(%+v) = nil, want an error", c)
		}
	}
}

func TestSplitRuleAndJumpDetection(t *testing.T) {
	got := splitRule(`-A OUTPUT -m comment --comment "a \"b\" c" -j AV-OUTPUT`)
	want := []string{"-A", "OUTPUT", "-m", "comment", "--comment", `a "b" c`, "-j", "AV-OUTPUT"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("splitRule = %q, want %q", got, want)
	}
	if _, ok := jumpToOurs("-A FORWARD -j AV-FORWARD", "FORWARD"); !ok {
		t.Error("bare jump not recognised")
	}
	for _, l := range []string{"-A FORWARD -j ACCEPT", "-A FORWARD -j AVX", "-N AV-FORWARD", "-A OTHER -j AV-FORWARD"} {
		if _, ok := jumpToOurs(l, "FORWARD"); ok {
			t.Errorf("%q recognised as our jump", l)
		}
	}
}
