package appliance

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/harness"
	"github.com/agentvault/agent-vault/internal/testutil/netns"
)

// Addresses of the local-mode topology (shape L): the appliance's namespace
// reaches the fake internet over one veth pair, with the same addresses the
// gateway topology gives its Net side, so tests read alike.
//
//	[av-local-*]  net0  10.77.2.1/24  fd77:2::1/64   broker + agents (cgroups)
//	     | veth
//	[av-net-*]    eth0  10.77.2.2/24  fd77:2::2/64   + canary 10.77.2.9, fd77:2::9
var (
	LocalV4 = netns.GWNetV4 // the broker's (and every local process's) address
	LocalV6 = netns.GWNetV6
)

// Local is a running appliance in local mode (--redirect local): the broker
// and the agents share one namespace; agents are processes in cgroups below
// a temporary agents' cgroup.
type Local struct {
	NS  *netns.NS // broker + agents
	Net *netns.NS // the fake internet

	Internet
	Srv          *harness.Server
	BrokerCAFile string
	Dir          string

	CgroupMount  string // the cgroup2 mount
	AgentsCgroup string // absolute: --agents-cgroup of the server
	// AgentCgroup (absolute) is bound to Agent (agent create --cgroup
	// AgentCgroupRel); StrangerCgroup is a child of the agents' cgroup that
	// no agent is bound to (an unknown agent).
	AgentCgroup, AgentCgroupRel string
	StrangerCgroup              string

	mu  sync.Mutex
	fds map[string]*os.File // open cgroup directories, by path
}

// StartLocal builds a namespace for the broker and the agents, a second one
// for the fake internet, a temporary agents' cgroup under the cgroup2 mount
// with two children (one bound to Agent, one bound to nobody), starts the
// appliance with --redirect local, configures the same vault, credential,
// service and agent as StartGateway (the agent bound by --cgroup), and tears
// it all down in t.Cleanup.
func StartLocal(t *testing.T, extraArgs ...string) *Local {
	t.Helper()
	netns.RequirePrivileged(t, "ip", "nsenter", "iptables", "ip6tables", "curl")
	bin := Binary(t)
	l := &Local{Dir: t.TempDir()}
	l.NS = netns.New(t, "local")
	l.Net = netns.New(t, "net")
	buildLocalLinks(t, l.NS, l.Net)
	l.makeCgroups(t)

	l.Internet = startInternet(t, l.Net, netns.NetV4, netns.NetV6, l.Dir)
	l.Srv = newServer(t, bin, l.Dir, l.NS, &l.Internet,
		[]string{"--redirect", "local", "--agents-cgroup", l.AgentsCgroup}, extraArgs)
	if err := startServer(l.Srv); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, l.Srv, func() {
		// the backstop stays after a stop (fail closed): remove it
		if r := l.Srv.CLI("", nil, "server", "--cleanup", "--data-dir", l.Srv.DataDir); r.Code != 0 {
			t.Logf("server --cleanup: exit %d: %s", r.Code, r.Stderr)
		}
	})
	// agents started through `ip netns exec` see the resolv.conf configure
	// writes (the eBPF programs send DNS to the broker whatever the address)
	l.BrokerCAFile = configure(t, l.Srv, l.Dir, l.NS.Name, "--cgroup", l.AgentCgroupRel)
	return l
}

// Restart starts the server again (after Srv.Kill or Srv.Stop) with the
// same data dir, flags and ports.
func (l *Local) Restart(t *testing.T) {
	t.Helper()
	if err := startServer(l.Srv); err != nil {
		t.Fatal(err)
	}
}

func buildLocalLinks(t *testing.T, local, net *netns.NS) {
	const macLocal, macNet = "02:77:02:00:00:01", "02:77:02:00:00:02"
	local.MustIP(t, "link", "add", "net0", "address", macLocal, "type", "veth", "peer", "name", "eth0", "address", macNet, "netns", net.Name)
	local.MustIP(t, "addr", "add", "10.77.2.1/24", "dev", "net0")
	local.MustIP(t, "addr", "add", "fd77:2::1/64", "dev", "net0", "nodad")
	net.MustIP(t, "addr", "add", "10.77.2.2/24", "dev", "eth0")
	net.MustIP(t, "addr", "add", "fd77:2::2/64", "dev", "eth0", "nodad")
	net.MustIP(t, "addr", "add", CanaryV4.String()+"/32", "dev", "eth0")
	net.MustIP(t, "addr", "add", CanaryV6.String()+"/128", "dev", "eth0", "nodad")
	local.MustIP(t, "link", "set", "net0", "up")
	net.MustIP(t, "link", "set", "eth0", "up")
	for _, ip := range []netip.Addr{netns.NetV4, netns.NetV6, CanaryV4, CanaryV6} {
		local.MustIP(t, "neigh", "replace", ip.String(), "lladdr", macNet, "dev", "net0", "nud", "permanent")
	}
	for _, ip := range []netip.Addr{LocalV4, LocalV6} {
		net.MustIP(t, "neigh", "replace", ip.String(), "lladdr", macLocal, "dev", "eth0", "nud", "permanent")
	}
	// Everything not local goes towards the fake internet, so a connection
	// that escapes capture (to any address) is visible there.
	local.MustIP(t, "route", "add", "default", "via", netns.NetV4.String())
	local.MustIP(t, "-6", "route", "add", "default", "via", netns.NetV6.String())
}

// makeCgroups creates av-cg-<pid>-<hex> (the agents' cgroup) under the
// cgroup2 mount, with the children "agent" and "stranger", removes stale
// ones of dead runs, and removes them all in cleanup.
func (l *Local) makeCgroups(t *testing.T) {
	mount, err := cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	l.CgroupMount = mount
	SweepCgroups(mount)
	l.AgentsCgroup = filepath.Join(mount, netns.UniqueName("cg"))
	l.AgentCgroup = filepath.Join(l.AgentsCgroup, "agent")
	l.StrangerCgroup = filepath.Join(l.AgentsCgroup, "stranger")
	l.AgentCgroupRel = strings.TrimPrefix(l.AgentCgroup, mount)
	for _, dir := range []string{l.AgentsCgroup, l.AgentCgroup, l.StrangerCgroup} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatalf("create cgroup: %v", err)
		}
	}
	t.Cleanup(func() {
		l.closeFDs()
		if err := RemoveCgroupTree(l.AgentsCgroup); err != nil {
			t.Errorf("cgroup left behind: %v", err)
		}
	})
}

// SweepCgroups removes av-* cgroup trees directly under mount whose
// creating test process is gone.
func SweepCgroups(mount string) {
	entries, err := os.ReadDir(mount)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.IsDir() && netns.Stale(e.Name()) {
			_ = RemoveCgroupTree(filepath.Join(mount, e.Name()))
		}
	}
}

// RemoveCgroupTree kills what still runs in a cgroup and its descendants
// (cgroup.kill), then removes them deepest first, retrying briefly while the
// last processes exit (bounded: about 2 s per cgroup).
func RemoveCgroupTree(dir string) error {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if len(dirs) > 0 {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0o644)
	}
	var last error
	for i := len(dirs) - 1; i >= 0; i-- {
		last = nil
		for try := 0; try < 100; try++ {
			err := os.Remove(dirs[i])
			if err == nil || os.IsNotExist(err) {
				last = nil
				break
			}
			last = err
			time.Sleep(20 * time.Millisecond)
		}
		if last != nil {
			return fmt.Errorf("remove cgroup %s: %w", dirs[i], last)
		}
	}
	return nil
}

// cgroup2Mount finds the cgroup2 entry of /proc/self/mountinfo (a test
// helper's own copy: this package imports nothing of the product).
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, sf := strings.Fields(pre), strings.Fields(post)
		if len(pf) >= 5 && len(sf) >= 1 && sf[0] == "cgroup2" {
			return strings.ReplaceAll(pf[4], `\040`, " "), nil
		}
	}
	return "", fmt.Errorf("no cgroup2 mount in /proc/self/mountinfo")
}

// CLI runs the agent-vault CLI in the appliance's namespace (as the
// operator: outside the agents' cgroup), failing the test unless it exits 0.
func (l *Local) CLI(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	return cli(t, l.Srv, stdin, args...)
}

// Command runs name in the appliance's namespace (through `ip netns exec`,
// which also gives it the namespace's resolv.conf), with no proxy variables,
// started directly inside the cgroup at cgroupPath; "" leaves it in the
// test's own cgroup: a process that is not an agent. The cgroup's directory
// is opened once and closed when the test ends. (`ip netns exec` remounts
// /sys in the child's own mount namespace, so the child does not see the
// cgroup2 mount; /proc/self/cgroup still names its cgroup.)
func (l *Local) Command(ctx context.Context, cgroupPath, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.NS.Name, name}, args...)...)
	cmd.Env = netns.CleanEnv()
	if cgroupPath != "" {
		fd, err := l.cgroupFD(cgroupPath)
		if err != nil {
			cmd.Err = err // Start reports it
			return cmd
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	}
	return cmd
}

// cgroupFD returns an open descriptor of the cgroup directory at path,
// opened once and closed when the test ends.
func (l *Local) cgroupFD(path string) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f, ok := l.fds[path]; ok {
		return int(f.Fd()), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return -1, fmt.Errorf("open cgroup %s: %w", path, err)
	}
	if l.fds == nil {
		l.fds = map[string]*os.File{}
	}
	l.fds[path] = f
	return int(f.Fd()), nil
}

func (l *Local) closeFDs() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for p, f := range l.fds {
		f.Close()
		delete(l.fds, p)
	}
}

// AgentCommand is Command in the cgroup bound to Agent.
func (l *Local) AgentCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	return l.Command(ctx, l.AgentCgroup, name, args...)
}

// Curl runs curl as the agent (in AgentCgroup), trusting only the
// appliance's CA, and returns its stdout, stderr and exit code.
func (l *Local) Curl(args ...string) (stdout, stderr string, code int) {
	return l.CurlIn(l.AgentCgroup, args...)
}

// CurlIn runs curl in the cgroup at cgroupPath ("" = not an agent).
func (l *Local) CurlIn(cgroupPath string, args ...string) (stdout, stderr string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"-sS", "--max-time", "10", "--cacert", l.BrokerCAFile}, args...)
	return runCmd(l.Command(ctx, cgroupPath, "curl", full...))
}

// AuditJSON returns `audit list --json` rows (newest first) with extra flags.
func (l *Local) AuditJSON(t *testing.T, args ...string) []map[string]any {
	t.Helper()
	return auditRows(t, l.Srv, args...)
}

// String describes the appliance for failure messages.
func (l *Local) String() string {
	return fmt.Sprintf("local appliance in %s (net %s, agents' cgroup %s)", l.NS.Name, l.Net.Name, l.AgentsCgroup)
}

func runCmd(cmd *exec.Cmd) (stdout, stderr string, code int) {
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
		e.WriteString(err.Error())
	}
	return o.String(), e.String(), code
}

// auditRows runs `audit list --json` and returns its rows (newest first).
// A missing "events" list fails the test: an empty result must never come
// from reading the wrong field.
func auditRows(t *testing.T, srv *harness.Server, args ...string) []map[string]any {
	t.Helper()
	var page struct {
		Events *[]map[string]any `json:"events"`
	}
	if err := srv.CLIJSON(&page, "", append([]string{"audit", "list", "--limit", "1000"}, args...)...); err != nil {
		t.Fatal(err)
	}
	if page.Events == nil {
		t.Fatal("audit list --json printed no events list")
	}
	return *page.Events
}
