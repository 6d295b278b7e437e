package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/admin/client"
	"github.com/agentvault/agent-vault/redirect"
)

// runExit ends the process with the child's exit code (a variable so tests
// can intercept it).
var runExit = os.Exit

// caEnvVars point the usual TLS stacks at the appliance's root CA.
var caEnvVars = []string{"SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"}

type runOptions struct {
	vault, agent, mode, agentsCgroup, proxy string
	ttl                                     time.Duration
}

func (a *app) runCmd() *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run [--vault V] [--agent A] [--mode local|proxy] -- CMD ARGS",
		Short: "Run a command as a short-lived agent",
		Long: `Runs CMD as a short-lived agent of a vault and removes the agent when CMD
exits; exits with CMD's exit code.

--mode local (the default as root) puts CMD in a fresh cgroup below the agents'
cgroup of a server started with --redirect local: its HTTPS, HTTP and DNS
traffic is captured in the kernel, with no proxy settings at all. Needs root,
cgroup v2 and that server on this machine. --agents-cgroup must match the
server's.

--mode proxy (the default otherwise) sets HTTPS_PROXY and HTTP_PROXY (and their
lowercase forms) to the explicit proxy with the agent's token
(http://agent:TOKEN@HOST:PORT; --proxy, default: the admin server's host, port
14322).

Both modes write the appliance's root CA to a temporary file and point
SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE and
GIT_SSL_CAINFO at it. CMD never sees the operator's session (AGENT_VAULT_TOKEN
is removed from its environment).`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("%s needs a command: agent-vault run [flags] -- CMD ARGS", cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runAgent(cmd, o, args)
		},
	}
	cmd.Flags().SetInterspersed(false) // everything after CMD belongs to CMD
	f := cmd.Flags()
	f.StringVar(&o.vault, "vault", "", "the agent's vault (default: the only vault)")
	f.StringVar(&o.agent, "agent", "", "name of the short-lived agent (default run-<random>)")
	f.StringVar(&o.mode, "mode", "", "local (cgroup capture, needs root) or proxy (HTTPS_PROXY); default local as root, else proxy")
	f.StringVar(&o.agentsCgroup, "agents-cgroup", "agent-vault.agents", "with --mode local: the server's --agents-cgroup")
	f.StringVar(&o.proxy, "proxy", "", "with --mode proxy: the explicit proxy URL (default: where the server says its proxy listens)")
	f.DurationVar(&o.ttl, "ttl", 12*time.Hour, "the agent expires after this long even if run is killed")
	return cmd
}

func (a *app) runAgent(cmd *cobra.Command, o runOptions, argv []string) error {
	if o.mode == "" {
		o.mode = "proxy"
		if os.Geteuid() == 0 {
			o.mode = "local"
		}
	}
	if o.mode != "local" && o.mode != "proxy" {
		return usagef("--mode must be local or proxy, not %q", o.mode)
	}
	if o.ttl <= 0 {
		return usagef("--ttl must be positive")
	}
	if o.agent == "" {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("agent name: %w", err)
		}
		o.agent = "run-" + hex.EncodeToString(b[:])
	}
	ctx := cmd.Context()
	c, err := a.client()
	if err != nil {
		return err
	}
	// The server says where its data path listens; flags given explicitly win.
	health, _ := c.Health(ctx)
	if !cmd.Flags().Changed("agents-cgroup") && health.AgentsCgroup != "" {
		o.agentsCgroup = health.AgentsCgroup
	}
	if o.proxy == "" && health.ProxyAddr != "" {
		o.proxy = a.proxyFromHealth(health.ProxyAddr)
	}
	var agentsCgroup string
	if o.mode == "local" {
		if agentsCgroup, err = localRunReady(o.agentsCgroup); err != nil {
			return err
		}
	}
	if o.vault == "" {
		vs, err := c.Vaults(ctx)
		if err != nil {
			return a.explain(cmd, err)
		}
		if len(vs) != 1 {
			return usagef("%s needs --vault (there are %d vaults)", cmd.CommandPath(), len(vs))
		}
		o.vault = vs[0].Name
	}
	tmp, err := os.MkdirTemp("", "agent-vault-run-")
	if err != nil {
		return fmt.Errorf("temp dir for the CA: %w", err)
	}
	defer os.RemoveAll(tmp)
	pem, err := c.CACert(ctx)
	if err != nil {
		return a.explain(cmd, err)
	}
	caFile := filepath.Join(tmp, "agent-vault-ca.pem")
	if err := os.WriteFile(caFile, pem, 0o644); err != nil {
		return fmt.Errorf("write the CA: %w", err)
	}
	env := childEnv(os.Environ())
	for _, k := range caEnvVars {
		env = append(env, k+"="+caFile)
	}

	child := exec.Command(argv[0], argv[1:]...)
	child.Stdin, child.Stdout, child.Stderr = os.Stdin, a.stdout, a.stderr
	var cleanup []func() error
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			if err := cleanup[i](); err != nil {
				fmt.Fprintln(a.stderr, "agent-vault run: cleanup: "+oneLine(err.Error()))
			}
		}
	}()
	req := api.AgentCreate{Name: o.agent, ExpiresAt: time.Now().Add(o.ttl)}
	var proxyURL *url.URL
	switch o.mode {
	case "local":
		cg, rel, err := makeRunCgroup(agentsCgroup, o.agent)
		if err != nil {
			return err
		}
		cleanup = append(cleanup, func() error { return removeRunCgroup(cg) })
		dir, err := os.Open(cg)
		if err != nil {
			return fmt.Errorf("open cgroup %s: %w", cg, err)
		}
		defer dir.Close()
		// The cgroup exists before the agent: the policy snapshot resolves an
		// agent's cgroup to its id when the agent record is written.
		req.Cgroup = rel
		child.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	case "proxy":
		if proxyURL, err = a.proxyURL(o.proxy); err != nil {
			return err
		}
	}
	tok, err := c.CreateAgent(ctx, o.vault, req)
	if err != nil {
		return a.explain(cmd, err)
	}
	cleanup = append(cleanup, deleteAgent(c, tok.Name))
	if proxyURL != nil {
		u := *proxyURL
		u.User = url.UserPassword("agent", tok.Token)
		for _, k := range []string{"HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"} {
			env = append(env, k+"="+u.String())
		}
	}
	child.Env = env
	if err := child.Start(); err != nil {
		return withHint(fmt.Errorf("start %s: %w", argv[0], err), "check the command name and PATH")
	}
	stop := context.AfterFunc(ctx, func() { _ = child.Process.Signal(syscall.SIGTERM) })
	waitErr := child.Wait()
	stop()
	code := exitCodeOf(child.ProcessState, waitErr)
	// clean up now: runExit does not return
	for i := len(cleanup) - 1; i >= 0; i-- {
		if err := cleanup[i](); err != nil {
			fmt.Fprintln(a.stderr, "agent-vault run: cleanup: "+oneLine(err.Error()))
			if code == 0 {
				code = exitFailure
			}
		}
	}
	cleanup = nil
	os.RemoveAll(tmp)
	if code != 0 {
		runExit(code)
	}
	return nil
}

// childEnv is the environment minus proxy settings, the operator's session
// and the master password.
func childEnv(environ []string) []string {
	var env []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasSuffix(strings.ToLower(k), "_proxy"), k == "AGENT_VAULT_TOKEN", k == "AGENT_VAULT_MASTER_PASSWORD":
			continue
		}
		skip := false
		for _, ca := range caEnvVars {
			skip = skip || k == ca
		}
		if !skip {
			env = append(env, kv)
		}
	}
	return env
}

// exitCodeOf is the child's exit code, 128+signal when a signal ended it.
func exitCodeOf(ps *os.ProcessState, err error) int {
	if ps == nil {
		return exitFailure
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	if code := ps.ExitCode(); code >= 0 {
		return code
	}
	if err != nil {
		return exitFailure
	}
	return 0
}

func deleteAgent(c *client.Client, name string) func() error {
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.DeleteAgent(ctx, name); err != nil {
			return fmt.Errorf("delete agent %s: %w (remove it with 'agent-vault agent delete %s')", name, err, name)
		}
		return nil
	}
}

// proxyURL is --proxy, else the admin server's host with port 14322.
// proxyFromHealth turns the server's proxy listen address into a URL the
// command can reach: an unspecified host means the admin server's host.
func (a *app) proxyFromHealth(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	if ip, err := netip.ParseAddr(host); host == "" || err == nil && ip.IsUnspecified() {
		if su, err := url.Parse(a.serverURL()); err == nil && su.Hostname() != "" {
			host = su.Hostname()
		}
	}
	return "http://" + net.JoinHostPort(host, port)
}

func (a *app) proxyURL(flag string) (*url.URL, error) {
	raw := flag
	if raw == "" {
		su, err := url.Parse(a.serverURL())
		if err != nil || su.Hostname() == "" {
			return nil, usagef("cannot derive the proxy address from %q: pass --proxy http://HOST:PORT", a.serverURL())
		}
		raw = "http://" + net.JoinHostPort(su.Hostname(), "14322")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, usagef("--proxy %q: use http://HOST:PORT", raw)
	}
	u.User = nil
	return u, nil
}

// localRunReady checks local mode's requirements (root, cgroup v2, the
// agents' cgroup with the server's capture attached) and returns the agents'
// cgroup's absolute path.
func localRunReady(agentsFlag string) (string, error) {
	const hint = "use --mode proxy (HTTPS_PROXY through the explicit proxy) instead"
	if os.Geteuid() != 0 {
		return "", withHint(errors.New("--mode local needs root (to create a cgroup and start the command in it)"), hint)
	}
	mount, err := redirect.Cgroup2Mount()
	if err != nil {
		return "", withHint(fmt.Errorf("--mode local needs cgroup v2: %w", err), hint)
	}
	agents, err := resolveAgentsCgroup(mount, agentsFlag)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(agents); err != nil {
		return "", withHint(fmt.Errorf("the agents' cgroup %s does not exist", agents),
			"start 'agent-vault server --redirect local' first (it creates it), check --agents-cgroup, or "+hint)
	}
	if err := checkCaptureAttached(agents); err != nil {
		return "", withHint(err, "start 'agent-vault server --redirect local --agents-cgroup "+agentsFlag+"', or "+hint)
	}
	return agents, nil
}

// makeRunCgroup creates <agents>/<name>; it returns its absolute path and
// its path below the cgroup2 mount (what agent create --cgroup takes).
func makeRunCgroup(agents, name string) (abs, rel string, err error) {
	mount, err := redirect.Cgroup2Mount()
	if err != nil {
		return "", "", err
	}
	abs = filepath.Join(agents, name)
	if err := os.Mkdir(abs, 0o755); err != nil {
		return "", "", fmt.Errorf("create cgroup %s: %w", abs, err)
	}
	return abs, strings.TrimPrefix(abs, mount), nil
}

// checkCaptureAttached refuses to run an agent in a cgroup nothing
// captures: the server's connect4 program must be attached to it.
func checkCaptureAttached(cgroup string) error {
	f, err := os.Open(cgroup)
	if err != nil {
		return fmt.Errorf("open %s: %w", cgroup, err)
	}
	defer f.Close()
	// effective programs: attached to this cgroup or inherited from above
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: ebpf.AttachCGroupInet4Connect,
		QueryFlags: unix.BPF_F_QUERY_EFFECTIVE})
	if err != nil {
		return fmt.Errorf("--mode local needs BPF: cannot query the programs of %s: %w", cgroup, err)
	}
	if len(res.Programs) == 0 {
		return fmt.Errorf("no agent-vault capture is attached to %s (is the server running with --redirect local?)", cgroup)
	}
	return nil
}

// removeRunCgroup kills what CMD left running in its cgroup, then removes
// the cgroup (bounded: about 2 s).
func removeRunCgroup(dir string) error {
	_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0o644)
	var err error
	for i := 0; i < 100; i++ {
		if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}
