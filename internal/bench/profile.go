package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuTime is a process's user+system CPU time so far, from /proc.
func cpuTime(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// the command name (field 2) may hold spaces: fields count from its ')'
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("unreadable /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("unreadable /proc/%d/stat", pid)
	}
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, nil
}

// profiler records the broker with perf(1) during one extra broker-only
// round of a load case: a CPU profile (perf record) into dir, or, with
// events set, counts of those events per request (perf stat), e.g.
// "syscalls:sys_enter_fdatasync" for the fsyncs a request costs.
type profiler struct {
	dir    string
	events string
	pid    int
}

func (p *profiler) enabled() bool { return p.dir != "" || p.events != "" }

func (p *profiler) around(name string, fn func() int64) {
	if !p.enabled() {
		return
	}
	var args []string
	out := filepath.Join(p.dir, name+".perf.data")
	if p.events != "" {
		args = []string{"stat", "-x", ",", "-e", p.events, "-p", strconv.Itoa(p.pid)}
	} else {
		if err := os.MkdirAll(p.dir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "profile:", err)
			return
		}
		args = []string{"record", "-F", "4999", "-g", "-p", strconv.Itoa(p.pid), "-o", out}
	}
	cmd := exec.Command("perf", args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "profile: perf:", err)
		return
	}
	time.Sleep(300 * time.Millisecond) // let perf attach
	n := fn()
	cmd.Process.Signal(syscall.SIGINT)
	cmd.Wait()
	if p.events == "" {
		fmt.Fprintf(os.Stderr, "profile: %s (perf report -i %s --no-children --sort symbol)\n", out, out)
		return
	}
	// perf stat -x, lines: value,unit,event,...
	for _, line := range strings.Split(stderr.String(), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 || n == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		fmt.Printf("STAT case=%s event=%s total=%.0f requests=%d per_request=%.3f\n", name, f[2], v, n, v/float64(n))
	}
}
