package bpf

import (
	"net/netip"
	"os"
	"testing"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("AGENT_VAULT_REQUIRE_PRIVILEGED") == "1" {
		t.Fatal("loading BPF programs needs root (and AGENT_VAULT_REQUIRE_PRIVILEGED=1 forbids skipping)")
	}
	t.Skip("loading BPF programs needs root")
}

// Every program passes the kernel's verifier, with and without IPv6.
func TestLoadVerifies(t *testing.T) {
	requireRoot(t)
	for _, cfg := range []Config{
		{Transparent4: netip.MustParseAddrPort("127.0.0.1:14323"), DNS4: netip.MustParseAddrPort("127.0.0.1:14353")},
		{
			Transparent4: netip.MustParseAddrPort("127.0.0.1:14323"), DNS4: netip.MustParseAddrPort("127.0.0.1:14353"),
			Transparent6: netip.MustParseAddrPort("[::1]:14323"), DNS6: netip.MustParseAddrPort("[::1]:14353"),
			NetnsCookie: 1,
		},
	} {
		o, err := Load(cfg)
		if err != nil {
			t.Fatalf("Load(%+v): %v", cfg, err)
		}
		if n := len(o.Programs()); n != 8 {
			t.Errorf("%d programs, want 8", n)
		}
		for _, p := range o.Programs() {
			if p.Program == nil {
				t.Errorf("program %s not loaded", p.Name)
			}
		}
		if _, err := o.TakeConnOrigin(netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2")); err != ErrNotFound {
			t.Errorf("empty map lookup: %v, want ErrNotFound", err)
		}
		if err := o.Close(); err != nil {
			t.Error(err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []Config{
		{Transparent4: netip.MustParseAddrPort("[::1]:1")},
		{Transparent6: netip.MustParseAddrPort("127.0.0.1:1")},
		{DNS4: netip.MustParseAddrPort("0.0.0.0:53")},
		{DNS4: netip.MustParseAddrPort("127.0.0.1:0")},
	}
	for _, c := range bad {
		if c.validate() == nil {
			t.Errorf("validate(%+v) = nil, want an error", c)
		}
	}
}
