package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestWithSysmonSetting(t *testing.T) {
	for in, want := range map[string]string{
		"":                           sysmonSetting,
		"madvdontneed=1":             "madvdontneed=1," + sysmonSetting,
		"schedtrace=0":               "",
		"http2debug=1, schedtrace=5": "",
	} {
		got, changed := withSysmonSetting(in)
		if want == "" {
			if changed || got != in {
				t.Errorf("withSysmonSetting(%q) = %q, %v; the operator's schedtrace must stay", in, got, changed)
			}
			continue
		}
		if !changed || got != want {
			t.Errorf("withSysmonSetting(%q) = %q, %v; want %q", in, got, changed, want)
		}
	}
}

// The running server carries the setting (it re-executed itself before
// reading the master password from the environment, or it would not have
// opened the new store and come up), and an operator's own schedtrace is
// left as it is.
func TestServerKeepsSysmonAwake(t *testing.T) {
	o := newOperator(t, filepath.Join(t.TempDir(), "data"))
	o.srv.Env = append(o.srv.Env, "GODEBUG=madvdontneed=1")
	o.start()
	if got, want := godebugOf(t, o.srv.Pid()), "madvdontneed=1,"+sysmonSetting; got != want {
		t.Fatalf("server GODEBUG = %q, want %q", got, want)
	}
	// still named after its binary for ps, pgrep and the journal
	if comm, err := os.ReadFile("/proc/" + strconv.Itoa(o.srv.Pid()) + "/comm"); err != nil || strings.TrimSpace(string(comm)) != filepath.Base(bin) {
		t.Errorf("server process name %q (%v), want %q", comm, err, filepath.Base(bin))
	}
	o.stop()

	o = newOperator(t, filepath.Join(t.TempDir(), "data"))
	o.srv.Env = append(o.srv.Env, "GODEBUG=schedtrace=0")
	o.start()
	if got := godebugOf(t, o.srv.Pid()); got != "schedtrace=0" {
		t.Fatalf("server GODEBUG = %q, want the operator's schedtrace=0", got)
	}
}

// godebugOf is the GODEBUG in a process's environment.
func godebugOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := strings.CutPrefix(string(kv), "GODEBUG="); ok {
			found = append(found, v)
		}
	}
	if len(found) > 1 {
		t.Fatalf("GODEBUG set %d times: %q", len(found), found)
	}
	return strings.Join(found, "")
}
