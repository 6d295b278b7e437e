// Package netns builds network namespaces for privileged tests: single
// namespaces (New), the three-namespace topology of TESTING.md (NewTopology),
// running Go code inside a namespace (NS.Do) and commands through nsenter
// (NS.Command; never `ip netns exec`, which remounts /sys and hides the
// cgroup2 mount). Everything is torn down in t.Cleanup, and Sweep removes
// what a killed test run left behind. It imports nothing of ours.
//
// Names carry the creating process id (av-<role>-<pid>-<random>), so
// parallel test runs on one machine never collide, and the sweeper removes
// only namespaces whose creator is gone. Addresses are the fixed ones of
// TESTING.md: they exist only inside the private namespaces each run builds,
// so two runs using the same subnets cannot see each other.
package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// EnvRequirePrivileged, set to 1, turns a privileged test's skip into a failure (CI).
const EnvRequirePrivileged = "AGENT_VAULT_REQUIRE_PRIVILEGED"

// RequirePrivileged skips the test with a reason unless it runs as root and
// every named tool is on PATH; with AGENT_VAULT_REQUIRE_PRIVILEGED=1 it fails
// instead of skipping.
func RequirePrivileged(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "privileged test needs " + strings.Join(missing, ", ")
	if os.Getenv(EnvRequirePrivileged) == "1" {
		t.Fatalf("%s (and %s=1 forbids skipping)", msg, EnvRequirePrivileged)
	}
	t.Skip(msg)
}

// NS is one named network namespace (/run/netns/Name).
type NS struct {
	Name string
	Path string
}

const runDir = "/run/netns"

var sweepOnce sync.Once

// UniqueName returns av-<role>-<pid>-<random hex>.
func UniqueName(role string) string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return fmt.Sprintf("av-%s-%d-%s", role, os.Getpid(), hex.EncodeToString(b[:]))
}

// New creates a fresh namespace with lo up, deleted in t.Cleanup. The first
// call in a process sweeps leftovers of dead runs.
func New(t testing.TB, role string) *NS {
	t.Helper()
	sweepOnce.Do(func() {
		if err := Sweep(); err != nil {
			t.Logf("netns sweep: %v", err)
		}
	})
	name := UniqueName(role)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	ns := &NS{Name: name, Path: filepath.Join(runDir, name)}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns.MustIP(t, "link", "set", "lo", "up")
	// No duplicate address detection on links made later (the veths'
	// link-local addresses would otherwise stay tentative for ~2 s and
	// stall neighbour discovery).
	for _, k := range []string{"net.ipv6.conf.default.accept_dad", "net.ipv6.conf.all.accept_dad"} {
		if err := ns.Sysctl(k, "0"); err != nil {
			t.Fatalf("sysctl %s in %s: %v", k, name, err)
		}
	}
	return ns
}

// Do runs fn on an OS thread switched into the namespace. Sockets fn
// creates belong to the namespace for their whole life; child processes fn
// starts (os/exec) are born in it. The thread is switched back afterwards,
// or discarded if that fails.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := os.Open(n.Path)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", n.Name, err)
			runtime.UnlockOSThread()
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", n.Name, err)
			runtime.UnlockOSThread()
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: the runtime ends it with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("leave netns %s: %w", n.Name, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Command returns `nsenter --net=<path> -- name args...` with an environment
// free of proxy settings.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path, "--", name}, args...)...)
	cmd.Env = CleanEnv()
	return cmd
}

// CleanEnv is the process environment without any proxy variable.
func CleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasSuffix(strings.ToLower(k), "_proxy") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// IP runs `ip -n <ns> args...`.
func (n *NS) IP(args ...string) error {
	out, err := exec.Command("ip", append([]string{"-n", n.Name}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -n %s %s: %w: %s", n.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// MustIP is IP, failing the test on error.
func (n *NS) MustIP(t testing.TB, args ...string) {
	t.Helper()
	if err := n.IP(args...); err != nil {
		t.Fatal(err)
	}
}

// Sysctl writes /proc/sys/<key with dots as slashes> inside the namespace.
func (n *NS) Sysctl(key, value string) error {
	return n.Do(func() error {
		return os.WriteFile("/proc/sys/"+strings.ReplaceAll(key, ".", "/"), []byte(value), 0o644)
	})
}

// Sweep deletes namespaces named av-*-<pid>-* whose creating process is
// gone (a test run killed before its cleanup).
func Sweep() error {
	entries, err := os.ReadDir(runDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", runDir, err)
	}
	var errs []error
	for _, e := range entries {
		if !Stale(e.Name()) {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %w: %s", e.Name(), err, out))
		}
	}
	return errors.Join(errs...)
}

// Stale reports whether name looks like av-<role>-<pid>-<hex> and that pid
// no longer runs. Other helpers (cgroups, ...) reuse the naming scheme.
func Stale(name string) bool {
	parts := strings.Split(name, "-")
	if len(parts) < 4 || parts[0] != "av" {
		return false
	}
	pid, err := strconv.Atoi(parts[len(parts)-2])
	if err != nil || pid <= 0 {
		return false
	}
	if pid == os.Getpid() {
		return false
	}
	err = syscall.Kill(pid, 0)
	return errors.Is(err, syscall.ESRCH)
}
