package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestChildArgs(t *testing.T) {
	in := []string{"server", "-d", "--data-dir", "x", "--detach=true", "--master-password-fd", "3", "--ready-fd=4", "--log-format", "json"}
	got := strings.Join(childArgs(in), " ")
	if got != "server --data-dir x --log-format json" {
		t.Fatalf("childArgs = %q", got)
	}
}

// TestExitCodes runs the command line in-process: usage mistakes exit 2,
// each with one line on stderr and nothing on stdout.
func TestExitCodes(t *testing.T) {
	for _, args := range [][]string{
		{"bogus"}, {"vault"}, {"vault", "create"}, {"vault", "create", "a", "b"}, {"vault", "list", "--nope"},
		{"credential", "set", "K"}, {"service", "add", "--vault", "v"}, {"agent", "create", "a"},
		{"server", "--log-format", "xml"}, {"server", "--redirect", "sideways"}, {"server", "--redirect", "gateway"},
		{"server", "--insecure-no-master-password", "--master-password-file", "f"},
		{"audit", "list", "--limit", "-1"}, {"login"},
	} {
		var out, errb bytes.Buffer
		a := &app{stdin: strings.NewReader(""), stdout: &out, stderr: &errb,
			getenv: func(string) string { return "" }, isTerminal: func(int) bool { return false }}
		code := execute(context.Background(), a, args)
		if code != exitUsage {
			t.Errorf("%v: exit %d, want %d (stderr %q)", args, code, exitUsage, errb.String())
			continue
		}
		if s := errb.String(); strings.Count(s, "\n") != 1 || !strings.HasPrefix(s, "agent-vault: ") || !strings.Contains(s, "--help") {
			t.Errorf("%v: stderr %q is not one line pointing at --help", args, s)
		}
		if out.Len() != 0 {
			t.Errorf("%v: stdout %q", args, out.String())
		}
	}
}
