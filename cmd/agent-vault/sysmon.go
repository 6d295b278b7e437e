package main

import (
	"context"
	"log/slog"
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
// sysmon then backs off to one wake-up every 10 ms (an idle server: 100
// wake-ups and ~3 ms of CPU per second, against ~10 and ~0 without).
//
// Costs, taken knowingly (GODEBUG=schedtrace=0 opts out):
//   - The period is the largest the runtime accepts, ~24.8 days of uptime
//     (CLOCK_MONOTONIC): on a host up longer than that, the runtime prints
//     one "SCHED ..." line to stderr at start and one per period, which is
//     not JSON under --log-format json.
//   - A fatal error prints every goroutine's state (a line each) before the
//     panic message; with thousands of agent connections that is more than
//     journald keeps of a burst, so the whole report also goes to crash.log
//     in the data dir (crash.go).
//   - A fatal error the runtime raises while holding its scheduler lock
//     can hang instead of exiting (the dump takes that lock).
const sysmonSetting = "schedtrace=2147483647"

// withSysmonSetting returns GODEBUG with sysmonSetting added, and false if
// the operator already chose a schedtrace (theirs wins). Keys are compared
// as the runtime reads them, spaces included.
func withSysmonSetting(godebug string) (string, bool) {
	for _, kv := range strings.Split(godebug, ",") {
		if strings.HasPrefix(kv, "schedtrace=") {
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
// at start). It returns only if that is not needed, not possible, or a
// signal already asked the server to stop; the server then runs as it is,
// with a warning: the setting is worth some CPU, never correctness. It must
// run before anything is read from stdin or the environment is changed.
func reexecWithSysmonSetting(ctx context.Context, log *slog.Logger) {
	godebug, changed := withSysmonSetting(os.Getenv("GODEBUG"))
	if !changed || ctx.Err() != nil {
		return
	}
	// the binary's path, not /proc/self/exe: exec names the process after
	// the file it runs, and ps, pgrep and the journal would show "exe"
	exe, err := os.Executable()
	if err == nil {
		// first: the runtime takes the first GODEBUG in the environment
		env := append([]string{"GODEBUG=" + godebug}, withoutEnv(os.Environ(), "GODEBUG")...)
		err = execKeepingLimits(exe, os.Args, env)
	}
	log.Warn("serving without the runtime setting: re-executing failed", "setting", "GODEBUG="+sysmonSetting, "err", err)
}

// execKeepingLimits is syscall.Exec, and if that fails, the open-files limit
// is put back: syscall.Exec lowers it to what the process started with
// (Go raises the soft limit to the hard one at start) before execve and
// leaves it there when execve fails, which would cap a server started from
// a shell near 1,000 connections. (Setting the limit also clears the one Go
// saved for children, so the server's own children, iptables and ip, then
// start with the raised soft limit: harmless.)
func execKeepingLimits(exe string, args, env []string) error {
	var nofile syscall.Rlimit
	saved := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &nofile) == nil
	err := syscall.Exec(exe, args, env)
	if saved {
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &nofile)
	}
	return err
}
