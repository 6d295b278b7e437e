package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// detachReadyTimeout bounds how long `server -d` waits for the background
// server to come up (the store's key derivation takes about a second).
const detachReadyTimeout = 2 * time.Minute

// detach re-executes this binary as `server` without -d, in its own
// session, with stdout and stderr appended to the log file in the data dir.
// The master password (already resolved, maybe from a prompt) travels over
// a pipe, never argv or the environment; the child writes its admin address
// to a second pipe once ready. detach returns once the child is ready, or
// with the child's own error line if it failed to start.
func (a *app) detach(ctx context.Context, cfg *serverConfig) error {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return withHint(fmt.Errorf("create data dir: %w", err), "check --data-dir and its permissions")
	}
	if pid, ok := runningPid(cfg.DataDir); ok {
		return withHint(fmt.Errorf("an agent-vault server (pid %d) already runs on %s", pid, cfg.DataDir),
			"stop it with 'agent-vault server stop --data-dir "+cfg.DataDir+"'")
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	logPath := filepath.Join(cfg.DataDir, logFile)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open log file: %w", err)
	}
	defer logf.Close()
	logStart, _ := logf.Seek(0, io.SeekEnd)

	args := childArgs(a.args)
	var extra []*os.File
	var pwWrite *os.File
	if !cfg.Insecure {
		pwRead, w, err := os.Pipe()
		if err != nil {
			return fmt.Errorf("make password pipe: %w", err)
		}
		defer pwRead.Close()
		pwWrite = w
		extra = append(extra, pwRead)
		args = append(args, "--master-password-fd", strconv.Itoa(2+len(extra)))
	}
	readyRead, readyWrite, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("make ready pipe: %w", err)
	}
	defer readyRead.Close()
	extra = append(extra, readyWrite)
	args = append(args, "--ready-fd", strconv.Itoa(2+len(extra)), "--data-dir", cfg.DataDir)

	child := exec.Command(exe, args...)
	child.Stdout, child.Stderr = logf, logf
	child.ExtraFiles = extra
	child.Env = withoutEnv(os.Environ(), "AGENT_VAULT_MASTER_PASSWORD")
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = child.Start()
	readyWrite.Close()
	if err != nil {
		if pwWrite != nil {
			pwWrite.Close()
		}
		return fmt.Errorf("start background server: %w", err)
	}
	if pwWrite != nil {
		go func() {
			_, _ = pwWrite.Write(cfg.password)
			clear(cfg.password)
			pwWrite.Close()
		}()
	}

	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(readyRead).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	var addr string
	select {
	case addr = <-line:
	case <-ctx.Done():
		_ = child.Process.Signal(syscall.SIGTERM)
		return ctx.Err()
	case <-time.After(detachReadyTimeout):
		_ = child.Process.Signal(syscall.SIGTERM)
		return withHint(fmt.Errorf("the background server was not ready within %s", detachReadyTimeout), "see "+logPath)
	}
	if addr == "" {
		werr := child.Wait()
		msg := lastErrorLine(logPath, logStart)
		if msg == "" {
			msg = fmt.Sprintf("the background server failed to start (%v); see %s", werr, logPath)
		}
		return errors.New(msg)
	}
	_ = child.Process.Release()
	fmt.Fprintf(a.stdout, "agent-vault server running in the background (pid %d), admin API on http://%s\nlog: %s\nstop it with: agent-vault server stop --data-dir %s\n",
		child.Process.Pid, addr, logPath, cfg.DataDir)
	return nil
}

// childArgs is the command line without -d/--detach and the hidden
// descriptor flags (the parent sets its own).
func childArgs(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-d" || a == "--detach" || strings.HasPrefix(a, "--detach="):
			continue
		case a == "--master-password-fd" || a == "--ready-fd":
			i++
			continue
		case strings.HasPrefix(a, "--master-password-fd=") || strings.HasPrefix(a, "--ready-fd="):
			continue
		}
		out = append(out, a)
	}
	return out
}

func withoutEnv(env []string, names ...string) []string {
	var out []string
outer:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue outer
			}
		}
		out = append(out, kv)
	}
	return out
}

// lastErrorLine returns the child's error line ("agent-vault: ...") from
// the log written since offset, without the prefix.
func lastErrorLine(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return ""
	}
	var last string
	sc := bufio.NewScanner(io.LimitReader(f, 1<<20))
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "agent-vault: ") {
			last = strings.TrimPrefix(l, "agent-vault: ")
		}
	}
	return last
}

// runningPid returns the pid in the data dir's pid file if that process is
// alive and is an agent-vault server.
func runningPid(dataDir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dataDir, pidFile))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(string(trimNL(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, isServerProcess(pid)
}

// isServerProcess reports whether pid is a live (not zombie) process whose
// command line is an agent-vault server.
func isServerProcess(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	if i := strings.LastIndexByte(string(stat), ')'); i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	argv := strings.Split(string(cmdline), "\x00")
	return len(argv) > 1 && strings.Contains(filepath.Base(argv[0]), "agent-vault") && argv[1] == "server"
}

func (a *app) serverStopCmd(cfg *serverConfig) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop [--data-dir DIR]",
		Short: "Stop the server running on the data dir (sends SIGTERM, waits)",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			pid, ok := runningPid(cfg.DataDir)
			if !ok {
				return withHint(fmt.Errorf("no agent-vault server is running on %s", cfg.DataDir),
					"check --data-dir (or AGENT_VAULT_DATA_DIR)")
			}
			if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
				return fmt.Errorf("signal server pid %d: %w", pid, err)
			}
			deadline := time.Now().Add(timeout)
			for isServerProcess(pid) {
				if time.Now().After(deadline) {
					return withHint(fmt.Errorf("the server (pid %d) did not stop within %s", pid, timeout),
						fmt.Sprintf("see %s, or kill -9 %d", filepath.Join(cfg.DataDir, logFile), pid))
				}
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(50 * time.Millisecond):
				}
			}
			fmt.Fprintf(a.stdout, "agent-vault server (pid %d) stopped.\n", pid)
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the server to stop")
	return cmd
}
