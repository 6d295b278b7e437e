package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/agentvault/agent-vault/admin/api"
)

func TestCleanNeutralisesTerminalControls(t *testing.T) {
	for in, want := range map[string]string{
		"plain text":           "plain text",
		"a\x1b[2Jb":            "a?[2Jb",
		"bell\a and \u009b31m": "bell? and ?31m",
		"bad \xff byte":        "bad ? byte",
		"two\nlines\ttab":      "two\nlines\ttab",
		"del\x7f":              "del?",
	} {
		if got := clean(in); got != want {
			t.Errorf("clean(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReadInviteFromStdin(t *testing.T) {
	a := &app{stdin: strings.NewReader("avi_tok \nmy new password\n"), stderr: &bytes.Buffer{}, isTerminal: func(int) bool { return false }}
	tok, pw, err := a.readInvite()
	if err != nil || string(tok) != "avi_tok" || string(pw) != "my new password" {
		t.Fatalf("readInvite = %q, %q, %v", tok, pw, err)
	}
	for _, in := range []string{"", "avi_tok\n", "\npassword\n"} {
		a.stdin = strings.NewReader(in)
		if _, _, err := a.readInvite(); err == nil {
			t.Errorf("readInvite(%q) accepted", in)
		}
	}
}

func TestDescribeRolesAndParseID(t *testing.T) {
	got := describeRoles(api.Account{Role: "viewer", VaultRoles: map[string]string{"prod": "admin", "dev": "approver"}})
	if got != "viewer; approver in dev; admin in prod" {
		t.Fatalf("describeRoles = %q", got)
	}
	if describeRoles(api.Account{}) != "no role" {
		t.Fatal("no role")
	}
	if id, err := parseID("#12"); err != nil || id != 12 {
		t.Fatalf("parseID = %d, %v", id, err)
	}
	for _, bad := range []string{"0", "-1", "x", ""} {
		if _, err := parseID(bad); err == nil {
			t.Errorf("parseID(%q) accepted", bad)
		}
	}
}
