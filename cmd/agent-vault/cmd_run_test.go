package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

func TestRunChildEnv(t *testing.T) {
	in := []string{"PATH=/bin", "HTTPS_PROXY=http://x", "no_proxy=*", "ALL_PROXY=socks5://x", "AGENT_VAULT_TOKEN=operator",
		"AGENT_VAULT_MASTER_PASSWORD=pw", "SSL_CERT_FILE=/etc/old.pem", "AGENT_VAULT_ADDR=http://127.0.0.1:14321", "HOME=/root"}
	got := childEnv(in)
	want := []string{"PATH=/bin", "AGENT_VAULT_ADDR=http://127.0.0.1:14321", "HOME=/root"}
	if !slices.Equal(got, want) {
		t.Errorf("childEnv = %q; want %q", got, want)
	}
}

func TestRunExitCode(t *testing.T) {
	for _, tc := range []struct {
		script string
		want   int
	}{{"exit 0", 0}, {"exit 7", 7}, {"kill -TERM $$", 128 + 15}} {
		cmd := exec.Command("sh", "-c", tc.script)
		err := cmd.Run()
		if got := exitCodeOf(cmd.ProcessState, err); got != tc.want {
			t.Errorf("%q: exit code %d; want %d", tc.script, got, tc.want)
		}
	}
	if got := exitCodeOf(nil, nil); got != exitFailure {
		t.Errorf("no process state: %d", got)
	}
}

func TestRunProxyURL(t *testing.T) {
	for _, tc := range []struct{ server, flag, want, err string }{
		{"http://127.0.0.1:14321", "", "http://127.0.0.1:14322", ""},
		{"http://[::1]:9000", "", "http://[::1]:14322", ""},
		{"http://box.example:14321", "http://proxy.example:3128", "http://proxy.example:3128", ""},
		{"http://127.0.0.1:14321", "http://u:p@127.0.0.1:1", "http://127.0.0.1:1", ""}, // userinfo dropped
		{"http://127.0.0.1:14321", "https://127.0.0.1:1", "", "use http://HOST:PORT"},
		{"http://127.0.0.1:14321", "127.0.0.1:1", "", "use http://HOST:PORT"},
	} {
		a := &app{server: tc.server, getenv: func(string) string { return "" }}
		u, err := a.proxyURL(tc.flag)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("proxyURL(%q) error = %v; want %q", tc.flag, err, tc.err)
			}
			continue
		}
		if err != nil || u.String() != tc.want {
			t.Errorf("proxyURL(%q) with server %s = %v, %v; want %s", tc.flag, tc.server, u, err, tc.want)
		}
	}
}
