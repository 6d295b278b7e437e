package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Server is the agent-vault binary running as a child process, with the CLI
// environment (config dir, server address) to drive it as an operator does.
type Server struct {
	Bin         string
	DataDir     string
	ConfigHome  string // XDG_CONFIG_HOME for the CLI's saved session
	AdminAddr   string
	ProxyAddr   string
	Transparent string
	DNSAddr     string
	Args        []string // extra server flags
	Env         []string // extra environment (e.g. AGENT_VAULT_MASTER_PASSWORD=...)
	// Wrap prefixes the server's and the CLI's command lines (e.g.
	// nsenter --net=PATH --), and InNS runs the health check where the
	// server's admin address is reachable; both nil on the host.
	Wrap []string
	InNS func(fn func() error) error
	// LogFile, if set, receives the server's output as a file, the way
	// `server -d` or journald take it, instead of a pipe this process
	// must drain (which costs the benchmark driver a wake-up per line).
	LogFile string
	cmd     *exec.Cmd
	log     *SyncBuffer
	done    chan error
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// NewServer prepares a server with its own data and config dirs under dir
// and fresh loopback ports.
func NewServer(bin, dir string) (*Server, error) {
	s := &Server{Bin: bin, DataDir: filepath.Join(dir, "data"), ConfigHome: filepath.Join(dir, "config")}
	for _, p := range []*string{&s.AdminAddr, &s.ProxyAddr, &s.Transparent, &s.DNSAddr} {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		*p = fmt.Sprintf("127.0.0.1:%d", port)
	}
	return s, os.MkdirAll(s.ConfigHome, 0o700)
}

// Start runs `agent-vault server` and waits until its health endpoint
// answers (or it exits).
func (s *Server) Start(ctx context.Context) error {
	args := append([]string{"server", "--data-dir", s.DataDir, "--admin-addr", s.AdminAddr,
		"--proxy-addr", s.ProxyAddr, "--transparent-addr", s.Transparent, "--dns-addr", s.DNSAddr}, s.Args...)
	s.cmd = s.command(args...)
	s.cmd.Env = append(s.baseEnv(), s.Env...)
	if s.log == nil {
		s.log = &SyncBuffer{} // kept across restarts: Log() is the whole story
	}
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if s.LogFile != "" {
		f, err := os.OpenFile(s.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("start server: %w", err)
		}
		defer f.Close() // the child has its own copy
		s.cmd.Stdout, s.cmd.Stderr = f, f
	}
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start server: %w", err)
	}
	s.done = make(chan error, 1)
	go func() { s.done <- s.cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-s.done:
			s.done <- err
			return fmt.Errorf("server exited before it was ready (%v): %s", err, s.Log())
		case <-ctx.Done():
			s.Kill()
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if s.healthy() {
			return nil
		}
	}
	s.Kill() // never leave a half-started server behind
	return fmt.Errorf("server not ready within 60 s: %s", s.Log())
}

func (s *Server) baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "AGENT_VAULT_") || strings.HasPrefix(kv, "HTTP_PROXY=") || strings.HasPrefix(kv, "HTTPS_PROXY=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "XDG_CONFIG_HOME="+s.ConfigHome, "AGENT_VAULT_ADDR=http://"+s.AdminAddr)
}

// Stop sends SIGTERM and waits (SIGKILL after 10 s).
func (s *Server) Stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		return fmt.Errorf("server did not stop within 10 s")
	}
}

// Kill sends SIGKILL, as a crash would.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		err := <-s.done
		s.done <- err
	}
}

// Log returns everything the server printed, over every Start.
func (s *Server) Log() string {
	if s.LogFile != "" {
		b, _ := os.ReadFile(s.LogFile)
		return string(b)
	}
	return s.log.String()
}

// CLIResult is one CLI run.
type CLIResult struct {
	Stdout, Stderr string
	Code           int
}

// CLI runs `agent-vault ARGS...` against this server with stdin as input.
func (s *Server) CLI(stdin string, env []string, args ...string) CLIResult {
	cmd := s.command(args...)
	cmd.Env = append(s.baseEnv(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		errb.WriteString(err.Error())
	}
	return CLIResult{Stdout: out.String(), Stderr: errb.String(), Code: code}
}

// MustCLI runs the CLI and fails with its stderr unless it exits 0.
func (s *Server) MustCLI(stdin string, args ...string) (string, error) {
	r := s.CLI(stdin, nil, args...)
	if r.Code != 0 {
		return r.Stdout, fmt.Errorf("agent-vault %s: exit %d: %s", strings.Join(args, " "), r.Code, strings.TrimSpace(r.Stderr))
	}
	return r.Stdout, nil
}

// CLIJSON runs the CLI with --json and decodes its stdout into v.
func (s *Server) CLIJSON(v any, stdin string, args ...string) error {
	out, err := s.MustCLI(stdin, append(args, "--json")...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("agent-vault %s --json printed %q: %w", strings.Join(args, " "), out, err)
	}
	return nil
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers (a log
// collector for tests).
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// BuildBinary builds ./cmd/agent-vault of the module at root into dir.
func BuildBinary(root, dir string) (string, error) {
	bin := filepath.Join(dir, "agent-vault")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/agent-vault")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v: %s", err, out)
	}
	return bin, nil
}

// Pid is the server process's id (0 before Start).
func (s *Server) Pid() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

func (s *Server) command(args ...string) *exec.Cmd {
	if len(s.Wrap) == 0 {
		return exec.Command(s.Bin, args...)
	}
	full := append(append(append([]string{}, s.Wrap[1:]...), s.Bin), args...)
	return exec.Command(s.Wrap[0], full...)
}

func (s *Server) healthy() bool {
	// One raw request on a socket dialled by this goroutine: http.Client
	// would dial from another goroutine, outside the namespace InNS entered.
	check := func() error {
		c, err := net.DialTimeout("tcp", s.AdminAddr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintf(c, "GET /api/v1/health HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", s.AdminAddr)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode >= 500 {
			return fmt.Errorf("health: %s", resp.Status)
		}
		return nil
	}
	if s.InNS != nil {
		return s.InNS(check) == nil
	}
	return check() == nil
}
