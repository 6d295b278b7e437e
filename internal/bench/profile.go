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

// profiler records the broker with perf(1) while fn runs, when dir is set.
type profiler struct {
	dir string
	pid int
}

func (p *profiler) around(name string, fn func()) {
	if p.dir == "" {
		fn()
		return
	}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		fn()
		return
	}
	out := filepath.Join(p.dir, name+".perf.data")
	cmd := exec.Command("perf", "record", "-F", "997", "-g", "-p", strconv.Itoa(p.pid), "-o", out)
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "profile: perf record:", err)
		fn()
		return
	}
	time.Sleep(300 * time.Millisecond) // let perf attach
	fn()
	cmd.Process.Signal(syscall.SIGINT)
	cmd.Wait()
	fmt.Fprintf(os.Stderr, "profile: %s (perf report -i %s --no-children --sort symbol)\n", out, out)
}
