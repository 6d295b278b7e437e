package main

import (
	"testing"
	"time"
)

func TestParseRetention(t *testing.T) {
	for in, want := range map[string]time.Duration{"": 0, "90d": 90 * 24 * time.Hour, "720h": 720 * time.Hour, "1h": time.Hour} {
		if got, err := parseRetention(in); err != nil || got != want {
			t.Errorf("parseRetention(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"d", "ninetyd", "10m", "-5d", "5x"} {
		if _, err := parseRetention(bad); err == nil {
			t.Errorf("parseRetention(%q) accepted", bad)
		}
	}
}

// The server and `run --mode local` resolve --agents-cgroup the same way,
// and neither accepts the cgroup2 root or a path that climbs out of it.
func TestResolveAgentsCgroup(t *testing.T) {
	const mount = "/sys/fs/cgroup"
	for flag, want := range map[string]string{
		"agent-vault.agents":          mount + "/agent-vault.agents",
		"/agent-vault.agents":         mount + "/agent-vault.agents",
		mount + "/agent-vault.agents": mount + "/agent-vault.agents",
		mount + "/a/b/":               mount + "/a/b",
		"/":                           "",
		mount:                         "",
		"../escape":                   "",
		mount + "/../escape":          mount + "/sys/fs/escape", // outside the mount: taken as relative
	} {
		got, err := resolveAgentsCgroup(mount, flag)
		if want == "" {
			if err == nil {
				t.Errorf("%q resolved to %q, want a refusal", flag, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q resolved to %q (%v), want %q", flag, got, err, want)
		}
	}
}
