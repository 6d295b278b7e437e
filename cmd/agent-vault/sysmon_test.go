package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func TestWithSysmonSetting(t *testing.T) {
	for in, want := range map[string]string{
		"":                          sysmonSetting,
		"madvdontneed=1":            "madvdontneed=1," + sysmonSetting,
		"schedtrace=0":              "",
		"http2debug=1,schedtrace=5": "",
		// the runtime reads " schedtrace" as another key: not the operator's choice
		"http2debug=1, schedtrace=5": "http2debug=1, schedtrace=5," + sysmonSetting,
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
	// the runtime ignores a value that does not fit an int32
	_, v, _ := strings.Cut(sysmonSetting, "=")
	if n, err := strconv.ParseInt(v, 10, 32); err != nil || n <= 0 {
		t.Fatalf("%s: the runtime would ignore it (%v)", sysmonSetting, err)
	}
}

// helperEnv makes the test binary a helper child for one test.
const helperEnv = "AGENT_VAULT_TEST_HELPER"

// helperChild runs the test binary again as a child for the test named,
// through sh so the child can start with lowered limits, and returns its
// combined output.
func helperChild(t *testing.T, name, shellPrefix string, env ...string) (string, error) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", shellPrefix+` exec "$0" -test.run='^`+name+`$' -test.count=1`, exe)
	// env last: os/exec keeps the last of duplicate entries (a GODEBUG of
	// the runner's must not mask the test's)
	cmd.Env = append(os.Environ(), append([]string{helperEnv + "=" + name}, env...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// A failed exec leaves the open-files limit as it was. syscall.Exec lowers
// it to the limit the process started with before execve; a child started
// with a soft limit of 256 checks that it is back at its hard limit.
func TestExecKeepingLimits(t *testing.T) {
	if os.Getenv(helperEnv) == t.Name() {
		var before, after syscall.Rlimit
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &before)
		err := execKeepingLimits("/nonexistent/agent-vault", []string{"agent-vault"}, nil)
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &after)
		fmt.Printf("exec error: %v\nlimit before %d after %d hard %d\n", err, before.Cur, after.Cur, after.Max)
		if err == nil || after.Cur != before.Cur || before.Cur == 256 {
			os.Exit(1)
		}
		return
	}
	out, err := helperChild(t, t.Name(), "ulimit -Sn 256 &&")
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
}

// A fatal error's report lands in crash.log too, goroutine states from
// sysmonSetting included, and an oversized crash.log is moved aside first.
func TestKeepCrashOutput(t *testing.T) {
	if os.Getenv(helperEnv) == t.Name() {
		keepCrashOutput(os.Getenv("CRASH_DIR"), slog.New(slog.NewTextHandler(os.Stderr, nil)))
		done := make(chan struct{})
		go func() { panic("crash-marker-6f1d") }() // unrecovered: fatal
		<-done
		return
	}
	dir := t.TempDir()
	old := filepath.Join(dir, crashFile)
	if err := os.WriteFile(old, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(old, crashKeep+1); err != nil {
		t.Fatal(err)
	}
	out, err := helperChild(t, t.Name(), "", "CRASH_DIR="+dir, "GODEBUG="+sysmonSetting)
	if err == nil {
		t.Fatalf("the helper did not crash:\n%s", out)
	}
	b, err := os.ReadFile(old)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SCHED ", "panic: crash-marker-6f1d", "goroutine "} {
		if !strings.Contains(string(b), want) {
			t.Errorf("crash.log lacks %q:\n%.2000s", want, b)
		}
	}
	if st, err := os.Stat(old); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("crash.log: %v, %v; want mode 0600", st, err)
	}
	if st, err := os.Stat(old + ".1"); err != nil || st.Size() != crashKeep+1 {
		t.Errorf("the oversized crash.log was not moved to crash.log.1: %v, %v", st, err)
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
