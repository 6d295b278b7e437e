package redirect

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/agentvault/agent-vault/bpf"
)

// LocalConfig describes local mode (shape L). The addresses must be
// reachable from the agents' network namespace, which local mode requires
// to be the caller's own: sockets of any other namespace are denied by the
// programs (the rewritten address would mean something else there).
// Typically 127.0.0.1:<port> and [::1]:<port> of listeners bound there.
// An invalid (zero) address disables that path: its traffic is denied.
type LocalConfig struct {
	Transparent4 netip.AddrPort // tcp/80,443 over IPv4 go here
	Transparent6 netip.AddrPort // tcp/80,443 over IPv6 go here
	DNS4         netip.AddrPort // udp+tcp/53 over IPv4 go here
	DNS6         netip.AddrPort // udp+tcp/53 over IPv6 go here
	// NoBackstop skips the iptables OUTPUT backstop (only for tests of the
	// programs alone; never in production).
	NoBackstop bool
}

// Local is local mode attached to one cgroup.
type Local struct {
	objs   *bpf.Objects
	cgroup string // absolute path
	plan   Plan   // the backstop; empty with NoBackstop

	mu    sync.Mutex
	links []link.Link
}

// Cgroup2Mount returns where the cgroup v2 hierarchy is mounted, read from
// /proc/self/mountinfo (e.g. /sys/fs/cgroup, or /sys/fs/cgroup/unified on
// a hybrid layout).
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if mp, ok := cgroup2FromMountinfo(sc.Text()); ok {
			return mp, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	return "", errors.New("no cgroup2 mount in /proc/self/mountinfo (mount one: mount -t cgroup2 none /sys/fs/cgroup)")
}

// cgroup2FromMountinfo parses one mountinfo line:
// "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER".
func cgroup2FromMountinfo(line string) (string, bool) {
	pre, post, ok := strings.Cut(line, " - ")
	if !ok {
		return "", false
	}
	pf, sf := strings.Fields(pre), strings.Fields(post)
	if len(pf) < 5 || len(sf) < 1 || sf[0] != "cgroup2" {
		return "", false
	}
	return unescapeMount(pf[4]), true
}

// unescapeMount undoes the octal escapes (\040 for a space) of mountinfo.
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// CgroupID returns the id of a cgroup v2 directory: its inode number, the
// value BPF's bpf_get_current_cgroup_id reports for tasks inside it.
func CgroupID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}

// NetnsCookie returns the cookie of the caller's network namespace.
func NetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: socket: %w", err)
	}
	defer unix.Close(fd)
	v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("netns cookie: getsockopt SO_NETNS_COOKIE: %w", err)
	}
	return v, nil
}

// AttachCgroup loads the local-mode programs and attaches them to the
// cgroup at path (absolute, under the cgroup2 mount) only; they apply to
// its descendants. Unless cfg.NoBackstop, it first installs the iptables
// OUTPUT backstop matching that cgroup (-m cgroup --path), which drops what
// the programs would deny, so agents fail closed if the programs go away
// (the attachments are held by file descriptors and vanish with this
// process, even after kill -9; the backstop stays). Must be called in the
// network namespace the agents and the broker's listeners share.
func AttachCgroup(path string, cfg LocalConfig) (*Local, error) {
	mount, err := Cgroup2Mount()
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("agents cgroup %s: %w", path, err)
	}
	rel, err := filepath.Rel(mount, abs)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, fmt.Errorf("agents cgroup %s is not under the cgroup2 mount %s", abs, mount)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(abs, &sfs); err != nil {
		return nil, fmt.Errorf("agents cgroup %s: %w", abs, err)
	}
	if sfs.Type != unix.CGROUP2_SUPER_MAGIC {
		return nil, fmt.Errorf("agents cgroup %s is not on cgroup2", abs)
	}
	cookie, err := NetnsCookie()
	if err != nil {
		return nil, err
	}
	objs, err := bpf.Load(bpf.Config{
		Transparent4: cfg.Transparent4, Transparent6: cfg.Transparent6,
		DNS4: cfg.DNS4, DNS6: cfg.DNS6, NetnsCookie: cookie,
	})
	if err != nil {
		return nil, err
	}
	l := &Local{objs: objs, cgroup: abs}
	if !cfg.NoBackstop {
		l.plan = LocalBackstopPlan(BackstopConfig{
			CgroupPath:   "/" + strings.TrimPrefix(filepath.ToSlash(rel), "."),
			Transparent4: cfg.Transparent4, Transparent6: cfg.Transparent6,
			DNS4: cfg.DNS4, DNS6: cfg.DNS6,
		})
		if err := Apply(l.plan); err != nil {
			objs.Close()
			return nil, fmt.Errorf("install local backstop: %w", err)
		}
	}
	for _, p := range objs.Programs() {
		lk, err := link.AttachCgroup(link.CgroupOptions{Path: abs, Attach: p.Attach, Program: p.Program})
		if err != nil {
			l.Close()
			return nil, fmt.Errorf("attach %s to cgroup %s: %w", p.Name, abs, err)
		}
		l.links = append(l.links, lk)
	}
	return l, nil
}

// Backstop is the iptables plan installed with the programs (empty with NoBackstop).
func (l *Local) Backstop() Plan { return l.plan }

// OriginalDst returns where a connection accepted on the transparent (or
// DNS TCP) listener was going, and the cgroup id of the agent that made it.
// The record is consumed: call it once per connection.
func (l *Local) OriginalDst(c net.Conn) (netip.AddrPort, uint64, error) {
	local, peer, err := connAddrs(c)
	if err != nil {
		return netip.AddrPort{}, 0, err
	}
	o, err := l.objs.TakeConnOrigin(peer, local)
	if err != nil {
		return netip.AddrPort{}, 0, fmt.Errorf("original destination of %s -> %s: %w", peer, local, err)
	}
	return o.Dst, o.CgroupID, nil
}

// DNSOrigin returns, for a UDP query the DNS proxy received from src, which
// resolver the agent addressed and the agent's cgroup id. (TCP queries go
// through OriginalDst.)
func (l *Local) DNSOrigin(src netip.AddrPort) (netip.AddrPort, uint64, error) {
	o, err := l.objs.DNSOrigin(src)
	if err != nil {
		return netip.AddrPort{}, 0, fmt.Errorf("dns origin of %s: %w", src, err)
	}
	return o.Dst, o.CgroupID, nil
}

// Detach removes the programs from the cgroup but leaves the backstop (what
// a crash does). Close still removes the backstop.
func (l *Local) Detach() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for _, lk := range l.links {
		if err := lk.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach from cgroup %s: %w", l.cgroup, err))
		}
	}
	l.links = nil
	return errors.Join(errs...)
}

// Close detaches the programs, frees them, and removes the backstop. Nothing
// is pinned to bpffs, so nothing else is left behind.
func (l *Local) Close() error {
	errs := []error{l.Detach()}
	if err := l.objs.Close(); err != nil {
		errs = append(errs, err)
	}
	if len(l.plan.Chains) > 0 {
		if err := RemovePlan(l.plan); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
