package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/harness"
)

// These tests build the binary once and drive it as an operator does: a
// real server on a temp data dir and loopback ports, the CLI as child
// processes. AGENT_VAULT_TEST_KDF=fast keeps each start cheap (see run.go).

var bin string

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(m.Run()) // a helper child (sysmon_test.go): no binary needed
	}
	dir, err := os.MkdirTemp("", "agent-vault-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin, err = harness.BuildBinary("../..", dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// e2eSentinel is the credential value that must never come back out.
const e2eSentinel = "SENTINEL-e2e-4b7d-never-print-me-0c9f"

const masterPW = "master password for tests"

// operator wraps a harness server and records every CLI output for the
// sentinel scan.
type operator struct {
	t   *testing.T
	srv *harness.Server
	mu  sync.Mutex
	out bytes.Buffer
}

func newOperator(t *testing.T, dir string) *operator {
	t.Helper()
	srv, err := harness.NewServer(bin, dir)
	if err != nil {
		t.Fatal(err)
	}
	srv.Env = []string{"AGENT_VAULT_TEST_KDF=fast", "AGENT_VAULT_MASTER_PASSWORD=" + masterPW}
	return &operator{t: t, srv: srv}
}

func (o *operator) start(args ...string) {
	o.t.Helper()
	o.srv.Args = args
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := o.srv.Start(ctx); err != nil {
		o.t.Fatalf("start server: %v", err)
	}
	o.t.Cleanup(func() { o.srv.Stop() })
}

func (o *operator) stop() {
	o.t.Helper()
	if err := o.srv.Stop(); err != nil {
		o.t.Fatalf("stop server: %v\n%s", err, o.srv.Log())
	}
}

// run runs the CLI and checks its exit code.
func (o *operator) run(wantCode int, stdin string, env []string, args ...string) harness.CLIResult {
	o.t.Helper()
	r := o.srv.CLI(stdin, env, args...)
	o.mu.Lock()
	o.out.WriteString(r.Stdout + r.Stderr)
	o.mu.Unlock()
	if r.Code != wantCode {
		o.t.Fatalf("agent-vault %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.Code, wantCode, r.Stdout, r.Stderr)
	}
	if wantCode != 0 {
		if lines := strings.Count(strings.TrimSpace(r.Stderr), "\n"); lines != 0 || !strings.HasPrefix(r.Stderr, "agent-vault: ") {
			o.t.Fatalf("agent-vault %s: error is not one 'agent-vault: ' line: %q", strings.Join(args, " "), r.Stderr)
		}
	}
	return r
}

func (o *operator) ok(stdin string, args ...string) string {
	return o.run(0, stdin, nil, args...).Stdout
}

func (o *operator) json(v any, args ...string) {
	o.t.Helper()
	out := o.ok("", append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		o.t.Fatalf("agent-vault %s --json printed %q: %v", strings.Join(args, " "), out, err)
	}
}

func TestOperatorEndToEnd(t *testing.T) {
	o := newOperator(t, t.TempDir())
	o.start()
	srv := o.srv

	// before setup
	r := o.run(1, "", nil, "vault", "list")
	if !strings.Contains(r.Stderr, "agent-vault setup") {
		t.Fatalf("before setup, the error does not say to run setup: %q", r.Stderr)
	}
	o.run(1, "short\n", nil, "setup", "--email", "owner@example.com")
	o.ok("owner password 1\n", "setup", "--email", "owner@example.com")
	o.run(1, "other password\n", nil, "setup", "--email", "second@example.com")
	st, err := os.Stat(filepath.Join(srv.ConfigHome, "agent-vault", "session.json"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("session file: %v, %v", st, err)
	}

	o.ok("", "vault", "create", "prod")
	o.run(1, "", nil, "vault", "create", "prod")
	o.ok(e2eSentinel+"\n", "credential", "set", "--vault", "prod", "API_KEY")
	o.ok(e2eSentinel+"-basic", "credential", "set", "--vault", "prod", "BASIC_PW")
	o.run(1, "", nil, "credential", "set", "--vault", "prod", "EMPTY")
	o.run(1, e2eSentinel, nil, "credential", "set", "--vault", "nope", "K")
	var creds []map[string]any
	o.json(&creds, "credential", "list", "--vault", "prod")
	if len(creds) != 2 || creds[0]["key"] != "API_KEY" {
		t.Fatalf("credential list = %v", creds)
	}

	for _, args := range [][]string{
		{"--name", "bearer", "--host", "api.example.com", "--auth", "bearer", "--credential", "API_KEY"},
		{"--name", "hdr", "--host", "*.example.org", "--auth", "header", "--header", "X-Api-Key", "--prefix", "Key ", "--credential", "API_KEY", "--port", "8443"},
		{"--name", "basic", "--host", "git.example.net", "--auth", "basic", "--username", "bot", "--credential", "BASIC_PW", "--path", "/v1", "--method", "GET,post"},
		{"--name", "ph", "--host", "ph.example.com", "--auth", "placeholder", "--placeholder", "PLACEHOLDER-1", "--in", "header,query", "--header", "Authorization", "--credential", "API_KEY"},
		{"--name", "open", "--host", "open.example.com", "--auth", "none"},
	} {
		o.ok("", append([]string{"service", "add", "--vault", "prod"}, args...)...)
	}
	o.run(1, "", nil, "service", "add", "--vault", "prod", "--name", "dup", "--host", "*.com", "--auth", "none")
	o.run(1, "", nil, "service", "add", "--vault", "prod", "--name", "bearer", "--host", "b.example.com", "--auth", "none")
	o.run(1, "", nil, "service", "add", "--vault", "prod", "--name", "x", "--host", "x.example.com", "--auth", "bearer", "--credential", "MISSING")
	o.run(2, "", nil, "service", "add", "--vault", "prod", "--name", "x", "--auth", "none")
	var svcs []struct {
		Name, Host, Path string
		Port             int
		Methods          []string
		Auth             struct{ Kind, Credential, Header, Prefix, Username, Placeholder string }
	}
	o.json(&svcs, "service", "list", "--vault", "prod")
	if len(svcs) != 5 || svcs[0].Name != "basic" || strings.Join(svcs[0].Methods, ",") != "GET,POST" || svcs[0].Path != "/v1" ||
		svcs[2].Auth.Prefix != "Key " || svcs[2].Port != 8443 || svcs[4].Auth.Placeholder != "PLACEHOLDER-1" {
		t.Fatalf("service list = %+v", svcs)
	}

	var agent struct{ Name, Vault, Token string }
	o.json(&agent, "agent", "create", "--vault", "prod", "ci-bot", "--source", "10.77.1.2/32", "--source", "fd77:1::2")
	if agent.Name != "ci-bot" || !strings.HasPrefix(agent.Token, "ava_") {
		t.Fatalf("agent create --json = %+v", agent)
	}
	o.ok("", "agent", "create", "--vault", "prod", "local-bot", "--cgroup", "agent-vault.agents/local")
	o.run(1, "", nil, "agent", "create", "--vault", "prod", "bad", "--source", "0.0.0.0/0")
	o.run(2, "", nil, "agent", "create", "--vault", "prod", "bad", "--source", "not-a-cidr")
	o.ok("", "agent", "revoke", "local-bot")
	var agents []struct {
		Name    string
		Revoked bool
		Sources []string
	}
	o.json(&agents, "agent", "list")
	if len(agents) != 2 || agents[0].Name != "ci-bot" || len(agents[0].Sources) != 2 || !agents[1].Revoked {
		t.Fatalf("agent list = %+v", agents)
	}
	if out := o.ok("", "agent", "list", "--vault", "prod"); !strings.Contains(out, "revoked") {
		t.Fatalf("agent list table: %q", out)
	}

	// usage errors exit 2, failures 1, each one line
	o.run(2, "", nil, "vault", "create")
	o.run(2, "", nil, "credential", "list")
	o.run(2, "", nil, "bogus")
	o.run(2, "", nil, "vault", "list", "--bogus")
	o.run(2, "", nil, "audit", "list", "--decision", "maybe")
	o.run(1, "", []string{"AGENT_VAULT_TOKEN=avs_forged"}, "vault", "list")
	o.run(1, "wrong password\n", nil, "login", "--email", "owner@example.com")
	r = o.run(1, "", nil, "--server", "http://127.0.0.1:1", "vault", "list")
	if !strings.Contains(r.Stderr, "cannot reach") {
		t.Fatalf("unreachable server: %q", r.Stderr)
	}

	var page struct {
		Events []struct {
			Seq      uint64
			Action   string
			Decision string
			Actor    struct{ Kind, Name string }
		}
	}
	o.json(&page, "audit", "list", "--limit", "1000")
	actions := map[string]int{}
	for _, e := range page.Events {
		actions[e.Action]++
	}
	for _, a := range []string{"vault.create", "credential.set", "service.add", "agent.create", "agent.revoke", "user.setup", "user.login"} {
		if actions[a] == 0 {
			t.Errorf("no %s row in the audit log: %v", a, actions)
		}
	}
	o.json(&page, "audit", "list", "--action", "user.login", "--decision", "deny")
	if len(page.Events) != 1 {
		t.Fatalf("denied logins = %+v", page.Events)
	}
	if out := o.ok("", "audit", "verify"); !strings.Contains(out, "intact") {
		t.Fatalf("audit verify: %q", out)
	}
	if out := o.ok("", "version"); !strings.HasPrefix(out, "agent-vault ") {
		t.Fatalf("version: %q", out)
	}
	for _, c := range [][]string{{"--help"}, {"server", "--help"}, {"service", "add", "--help"}, {"agent", "create", "--help"}} {
		if out := o.ok("", c...); !strings.Contains(out, "Usage:") {
			t.Fatalf("%v: %q", c, out)
		}
	}

	// restart with JSON logs: everything persisted, the saved session too
	o.stop()
	textLog := srv.Log()
	textLen := len(textLog) // the log keeps earlier runs' (text) lines
	o.start("--log-format", "json")
	if out := o.ok("", "vault", "list"); !strings.Contains(out, "prod") {
		t.Fatalf("vault list after restart: %q", out)
	}
	o.json(&svcs, "service", "list", "--vault", "prod")
	o.json(&agents, "agent", "list")
	if len(svcs) != 5 || len(agents) != 2 {
		t.Fatalf("after restart: %d services, %d agents", len(svcs), len(agents))
	}
	var v struct {
		OK   bool
		Rows uint64
	}
	o.json(&v, "audit", "verify")
	if !v.OK || v.Rows < 10 {
		t.Fatalf("audit verify after restart = %+v", v)
	}

	// a second server on the same data dir: locked, exit 1, says so
	second := exec.Command(bin, "server", "--data-dir", srv.DataDir, "--admin-addr", "127.0.0.1:0")
	second.Env = append(os.Environ(), "AGENT_VAULT_TEST_KDF=fast", "AGENT_VAULT_MASTER_PASSWORD="+masterPW)
	out, err := second.CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "locked by another agent-vault server") {
		t.Fatalf("second server: exit %d: %s", code, out)
	}
	jsonLog := srv.Log()[textLen:]
	o.stop()
	for _, line := range strings.Split(strings.TrimSpace(jsonLog), "\n") {
		if !json.Valid([]byte(line)) {
			t.Fatalf("--log-format json printed a non-JSON line: %q", line)
		}
	}

	// a wrong master password: exit 1, clear message, file unchanged
	dbPath := filepath.Join(srv.DataDir, storeFile)
	before := fileDigest(t, dbPath)
	wrong := exec.Command(bin, "server", "--data-dir", srv.DataDir, "--admin-addr", "127.0.0.1:0")
	wrong.Env = append(os.Environ(), "AGENT_VAULT_TEST_KDF=fast", "AGENT_VAULT_MASTER_PASSWORD=not the password")
	out, err = wrong.CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "wrong master password") {
		t.Fatalf("wrong password: exit %d: %s", code, out)
	}
	if fileDigest(t, dbPath) != before {
		t.Fatal("a start with the wrong password changed the store file")
	}
	insecure := exec.Command(bin, "server", "--data-dir", srv.DataDir, "--admin-addr", "127.0.0.1:0", "--insecure-no-master-password")
	insecure.Env = append(os.Environ(), "AGENT_VAULT_TEST_KDF=fast")
	if out, err := insecure.CombinedOutput(); exitCode(err) != 1 || !strings.Contains(string(out), "is encrypted and needs its master password") {
		t.Fatalf("encrypted store opened passwordless: exit %d: %s", exitCode(err), out)
	}
	if fileDigest(t, dbPath) != before {
		t.Fatal("a passwordless start changed the encrypted store file")
	}

	// the sentinel appears nowhere: CLI output, server logs, the store file
	for name, text := range map[string]string{"CLI output": o.out.String(), "text log": textLog, "json log": jsonLog, "failed starts": string(out)} {
		if strings.Contains(text, e2eSentinel) {
			t.Errorf("the credential value appears in the %s", name)
		}
	}
	raw, err := os.ReadFile(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(e2eSentinel)) || bytes.Contains(raw, []byte("4b7d-never-print")) {
		t.Error("the credential value is in clear in the store file")
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

func fileDigest(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// TestDetachAndStop starts the server in the background with the admin
// address picked by the kernel, finds it in admin.addr, and stops it.
func TestDetachAndStop(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	pwFile := filepath.Join(dir, "master")
	if err := os.WriteFile(pwFile, []byte(masterPW+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "AGENT_VAULT_TEST_KDF=fast", "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	cli := func(args ...string) (string, int) {
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), exitCode(err)
	}
	out, code := cli("server", "-d", "--data-dir", data, "--admin-addr", "127.0.0.1:0", "--master-password-file", pwFile)
	if code != 0 || !strings.Contains(out, "running in the background") {
		t.Fatalf("server -d: exit %d: %s", code, out)
	}
	pid, ok := runningPid(data)
	if !ok {
		t.Fatalf("no live server pid in the data dir after -d: %s", out)
	}
	if got := godebugOf(t, pid); !strings.Contains(got, sysmonSetting) {
		t.Errorf("the detached server's GODEBUG is %q, without %s", got, sysmonSetting)
	}
	t.Cleanup(func() {
		if isServerProcess(pid) {
			cli("server", "stop", "--data-dir", data)
		}
	})
	addr, err := os.ReadFile(filepath.Join(data, addrFile))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + strings.TrimSpace(string(addr)) + "/api/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"ok"`) {
		t.Fatalf("health of the detached server: %d %s", resp.StatusCode, body)
	}
	// a second -d on the same data dir is refused
	if out, code := cli("server", "-d", "--data-dir", data, "--admin-addr", "127.0.0.1:0", "--master-password-file", pwFile); code != 1 || !strings.Contains(out, "already runs") {
		t.Fatalf("second -d: exit %d: %s", code, out)
	}
	if out, code := cli("server", "stop", "--data-dir", data); code != 0 || !strings.Contains(out, "stopped") {
		t.Fatalf("server stop: exit %d: %s", code, out)
	}
	if isServerProcess(pid) {
		t.Fatal("the server still runs after stop")
	}
	for _, f := range []string{pidFile, addrFile} {
		if _, err := os.Stat(filepath.Join(data, f)); !os.IsNotExist(err) {
			t.Errorf("%s left behind after stop: %v", f, err)
		}
	}
	logText, _ := os.ReadFile(filepath.Join(data, logFile))
	if !strings.Contains(string(logText), "agent-vault server stopped") || strings.Contains(string(logText), masterPW) {
		t.Fatalf("log file: %s", logText)
	}
	if out, code := cli("server", "stop", "--data-dir", data); code != 1 || !strings.Contains(out, "no agent-vault server is running") {
		t.Fatalf("stop without a server: exit %d: %s", code, out)
	}

	// -d with a wrong password fails in the foreground with the child's reason
	if err := os.WriteFile(pwFile, []byte("wrong\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = cli("server", "-d", "--data-dir", data, "--admin-addr", "127.0.0.1:0", "--master-password-file", pwFile)
	if code != 1 || !strings.Contains(out, "wrong master password") {
		t.Fatalf("server -d with a wrong password: exit %d: %s", code, out)
	}
	if _, ok := runningPid(data); ok {
		t.Fatal("a server runs after a failed -d")
	}
}

// TestPasswordModes: passwordless mode is announced loudly; a passwordless
// store refuses a password and vice versa; no password at all on a
// non-terminal is a usage error.
func TestPasswordModes(t *testing.T) {
	o := newOperator(t, t.TempDir())
	o.srv.Env = []string{"AGENT_VAULT_TEST_KDF=fast"}
	o.start("--insecure-no-master-password")
	o.ok("owner password 1\n", "setup", "--email", "owner@example.com")
	var h struct {
		Insecure bool `json:"insecure"`
	}
	resp, err := http.Get("http://" + o.srv.AdminAddr + "/api/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&h)
	resp.Body.Close()
	if !h.Insecure {
		t.Fatal("health does not say the store is passwordless")
	}
	o.stop()
	if !strings.Contains(o.srv.Log(), "RUNNING WITHOUT A MASTER PASSWORD") {
		t.Fatalf("passwordless mode not announced in capitals:\n%s", o.srv.Log())
	}
	server := func(env []string, args ...string) (string, int) {
		cmd := exec.Command(bin, append([]string{"server", "--data-dir", o.srv.DataDir, "--admin-addr", "127.0.0.1:0"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdin = strings.NewReader("")
		out, err := cmd.CombinedOutput()
		return string(out), exitCode(err)
	}
	if out, code := server([]string{"AGENT_VAULT_MASTER_PASSWORD=" + masterPW}); code != 1 || !strings.Contains(out, "created without a master password") {
		t.Fatalf("password on a passwordless store: exit %d: %s", code, out)
	}
	fresh := filepath.Join(t.TempDir(), "fresh")
	cmd := exec.Command(bin, "server", "--data-dir", fresh, "--admin-addr", "127.0.0.1:0")
	cmd.Env = withoutEnv(os.Environ(), "AGENT_VAULT_MASTER_PASSWORD")
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	if code := exitCode(err); code != 2 || !strings.Contains(string(out), "needs a master password") {
		t.Fatalf("no password at all: exit %d: %s", code, out)
	}
	if _, err := os.Stat(filepath.Join(fresh, storeFile)); !os.IsNotExist(err) {
		t.Fatalf("a refused start created a store: %v", err)
	}
}
