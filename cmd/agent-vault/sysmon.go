package main

import (
	"os"
	"strings"
	"syscall"
)

// sysmonSetting keeps the Go runtime's sysmon thread out of its deep sleep.
//
// Why: sysmon deep-sleeps whenever every P is idle, and the next goroutine
// to enter a system call wakes it, after which it polls every 20 µs until
// the process is idle again. A broker serving one request at a time goes
// idle twice per request (waiting for the upstream, then for the agent), so
// every request paid for two extra thread wake-ups and the polling between
// them: at c=1 on a 2-vCPU VM, about 40 µs of the broker's 150 µs of CPU
// per request and 5% of its throughput (make bench, small_c1). A positive
// schedtrace is the runtime's only switch that keeps sysmon from deep sleep;
// sysmon then backs off to one wake-up every 10 ms, which an appliance can
// afford (an idle server: 100 wake-ups and ~3 ms of CPU per second, against
// ~10 and ~0 without). The period is the largest the runtime accepts (about
// 24.8 days), so no trace line is printed unless the machine has been up
// longer than that (then one line at start and one per period); a fatal
// crash also prints the scheduler's state, which helps there.
const sysmonSetting = "schedtrace=2147483647"

// withSysmonSetting returns GODEBUG with sysmonSetting added, and false if
// the operator already chose a schedtrace (theirs wins).
func withSysmonSetting(godebug string) (string, bool) {
	for _, kv := range strings.Split(godebug, ",") {
		if strings.HasPrefix(strings.TrimSpace(kv), "schedtrace=") {
			return godebug, false
		}
	}
	if godebug == "" {
		return sysmonSetting, true
	}
	return godebug + "," + sysmonSetting, true
}

// reexecWithSysmonSetting replaces the process with itself, GODEBUG
// carrying sysmonSetting (the runtime reads GODEBUG's scheduler settings only
// at start). It returns only if that is not needed or not possible, and the
// server then runs as it is: the setting is worth a few per cent, never
// correctness. It must run before anything is read from stdin or the
// environment is changed.
func reexecWithSysmonSetting() {
	godebug, changed := withSysmonSetting(os.Getenv("GODEBUG"))
	if !changed {
		return
	}
	// the binary's path, not /proc/self/exe: exec names the process after
	// the file it runs, and ps, pgrep and the journal would show "exe"
	exe, err := os.Executable()
	if err != nil {
		return
	}
	env := []string{"GODEBUG=" + godebug}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	_ = syscall.Exec(exe, os.Args, env)
}
