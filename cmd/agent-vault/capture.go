package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/agentvault/agent-vault/mitm"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/redirect"
)

// capture owns the kernel side of the chosen --redirect mode: it installs
// the rules or programs after the listeners are bound, and answers, for the
// broker and the DNS proxy, where a captured connection was going and from
// which cgroup.
//
// Departure from ARCHITECTURE.md section 8 (decided here, to be carried
// into the design): at stop the redirect rules are NOT removed. With them in
// place a stopped broker fails closed (agents' connections are refused or
// dropped); removing them first would let agents reach the internet directly
// while the broker is down. `agent-vault server --cleanup` removes them, and
// a start replaces the previous run's rules with no gap (Apply, then
// CleanupExcept). In local mode the eBPF programs go with the process (they
// are held by file descriptors) while the iptables backstop stays, so the
// agents fail closed too.
type capture struct {
	log          *slog.Logger
	local        atomic.Pointer[redirect.Local]
	agentsCgroup string // local mode: the agents' cgroup, absolute
}

// origin is mitm's Config.Origin.
func (c *capture) origin(conn net.Conn) (mitm.Origin, error) {
	if l := c.local.Load(); l != nil {
		dst, id, err := l.OriginalDst(conn)
		return mitm.Origin{OriginalDst: dst, CgroupID: id}, err
	}
	dst, err := redirect.OriginalDst(conn)
	return mitm.Origin{OriginalDst: dst}, err
}

// identifyDNS is the DNS proxy's Identify: by the query's source address in
// gateway mode, by the sender's cgroup (recorded by the eBPF programs) in
// local mode.
func (c *capture) identifyDNS(current func() *policy.Snapshot) func(netip.AddrPort) (string, bool) {
	return func(src netip.AddrPort) (string, bool) {
		snap := current()
		if snap == nil {
			return "", false
		}
		if l := c.local.Load(); l != nil {
			if _, id, err := l.DNSOrigin(src); err == nil {
				if a, ok := snap.AgentByCgroupID(id); ok {
					return a.Name, true
				}
			}
			return "", false
		}
		if a, ok := snap.AgentBySource(src.Addr()); ok {
			return a.Name, true
		}
		return "", false
	}
}

// install puts this run's capture in place, then removes whatever an
// earlier run left that this run does not use.
func (c *capture) install(cfg *serverConfig, dp *dataPathListeners, admin net.Addr) error {
	tport := int(addrPortOf(dp.transparent.Addr()).Port())
	dport := int(addrPortOf(dp.dnsTCP.Addr()).Port())
	switch cfg.Redirect {
	case "gateway":
		gc := redirect.GatewayConfig{Ifaces: cfg.GatewayIfaces, TransparentPort: tport, DNSPort: dport,
			AdminPort: int(addrPortOf(admin).Port()), IPv6: ipv6Enabled()}
		if err := gc.Validate(); err != nil {
			return withHint(fmt.Errorf("gateway mode: %w", err), "check --gateway-iface")
		}
		if err := needRoot("--redirect gateway"); err != nil {
			return err
		}
		plan := redirect.GatewayPlan(gc)
		if err := redirect.Apply(plan); err != nil {
			return withHint(fmt.Errorf("install gateway rules: %w", err), "run 'agent-vault doctor' to see what is missing")
		}
		if err := redirect.CleanupExcept(plan); err != nil {
			c.log.Warn("could not remove an earlier run's rules", "err", err)
		}
		c.log.Info("gateway capture installed", "ifaces", strings.Join(cfg.GatewayIfaces, ","), "ipv6", gc.IPv6)
	case "local":
		if err := needRoot("--redirect local"); err != nil {
			return err
		}
		path, err := agentsCgroupPath(cfg.AgentsCgroup)
		if err != nil {
			return err
		}
		lc := redirect.LocalConfig{
			Transparent4: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(tport)),
			DNS4:         netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(dport)),
		}
		if ipv6Enabled() && listensOnV6(dp.transparent.Addr()) {
			lc.Transparent6 = netip.AddrPortFrom(netip.IPv6Loopback(), uint16(tport))
			lc.DNS6 = netip.AddrPortFrom(netip.IPv6Loopback(), uint16(dport))
		}
		l, err := redirect.AttachCgroup(path, lc)
		if err != nil {
			return withHint(fmt.Errorf("attach eBPF programs to %s: %w", path, err), "run 'agent-vault doctor' to see what is missing")
		}
		c.local.Store(l)
		c.agentsCgroup = path
		if err := redirect.CleanupExcept(l.Backstop()); err != nil {
			c.log.Warn("could not remove an earlier run's rules", "err", err)
		}
		c.log.Info("local capture attached", "cgroup", path)
	default:
		// Mode none touches no kernel state: another appliance in this
		// network namespace may own the AV-* rules, and an earlier run's
		// leftovers fail closed (they redirect to our ports or drop).
		// `agent-vault server --cleanup` removes them on purpose.
	}
	return nil
}

// stop releases the eBPF programs (they would go with the process anyway)
// and leaves every iptables rule in place: see the type's comment.
func (c *capture) stop(context.Context) error {
	if l := c.local.Swap(nil); l != nil {
		return l.Detach()
	}
	return nil
}

// cleanupLeftovers is `agent-vault server --cleanup`: it removes every
// AV-* chain and jump rule of both families (nothing else), and every eBPF
// attachment we own (they are held by file descriptors, so none outlives
// its process; nothing is pinned to bpffs).
func cleanupLeftovers(_ context.Context, cfg *serverConfig, log *slog.Logger) error {
	if err := needRoot("--cleanup"); err != nil {
		return err
	}
	if !haveIptables() {
		log.Info("cleanup: iptables is not installed, so no rule of ours can exist")
		return nil
	}
	if err := redirect.Cleanup(); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	log.Info("cleanup: removed every AV-* chain and rule (IPv4 and IPv6)")
	return nil
}

func needRoot(what string) error {
	if os.Geteuid() != 0 {
		return withHint(fmt.Errorf("%s needs root (iptables and eBPF)", what), "run as root, or use --redirect none with the explicit proxy (agent-vault run --mode proxy)")
	}
	return nil
}

func haveIptables() bool {
	_, err := exec.LookPath("iptables")
	return err == nil
}

// agentsCgroupPath resolves --agents-cgroup under the cgroup2 mount and
// creates it if missing.
func agentsCgroupPath(flag string) (string, error) {
	mount, err := redirect.Cgroup2Mount()
	if err != nil {
		return "", withHint(fmt.Errorf("local mode needs cgroup v2: %w", err), "mount cgroup2, or use --redirect gateway")
	}
	path, err := resolveAgentsCgroup(mount, flag)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(path, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("create agents cgroup %s: %w", path, err)
	}
	return path, nil
}

// resolveAgentsCgroup is --agents-cgroup as an absolute path: a path under
// the cgroup2 mount as given, anything else taken relative to the mount.
// The server and `run --mode local` both resolve it here, so they agree.
// The mount itself (every process on the machine) is refused.
func resolveAgentsCgroup(mount, flag string) (string, error) {
	mount = filepath.Clean(mount)
	path := filepath.Clean(flag)
	if path != mount && !strings.HasPrefix(path, mount+"/") {
		path = filepath.Join(mount, strings.TrimPrefix(path, "/"))
	}
	if !strings.HasPrefix(path, mount+"/") {
		return "", usagef("--agents-cgroup %q: name a cgroup below %s, not the root of every process", flag, mount)
	}
	return path, nil
}

func listensOnV6(a net.Addr) bool {
	ap := addrPortOf(a)
	return ap.Addr().Is6() && !ap.Addr().Is4In6() || ap.Addr().IsUnspecified()
}

func addrString(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) || errors.Is(err, mitm.ErrServerClosed) {
		return nil
	}
	return err
}
