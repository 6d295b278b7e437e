package redirect

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/testutil/netns"
)

func TestCgroup2MountParsing(t *testing.T) {
	for line, want := range map[string]string{
		"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw":                  "/sys/fs/cgroup/unified",
		"30 23 0:27 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate":        "/sys/fs/cgroup",
		`50 23 0:40 / /mnt/with\040space rw - cgroup2 none rw`:                                  "/mnt/with space",
		"32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu":                    "",
		"33 31 0:30 / /sys/fs/cgroup/cgroup2-lookalike rw,relatime - tmpfs cgroup2 rw,mode=755": "",
	} {
		got, ok := cgroup2FromMountinfo(line)
		if got != want || ok != (want != "") {
			t.Errorf("cgroup2FromMountinfo(%q) = %q, %v; want %q", line, got, ok, want)
		}
	}
	if os.Getenv(netns.EnvRequirePrivileged) == "1" || fileExists("/proc/self/mountinfo") {
		if _, err := Cgroup2Mount(); err != nil {
			t.Logf("this machine: %v", err)
		}
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// tempCgroup makes av-cg-<pid>-<hex> under the cgroup2 mount, removes it
// (and stale ones of dead runs) in cleanup, and returns its path and an
// open fd for SysProcAttr.CgroupFD.
func tempCgroup(t *testing.T) (string, *os.File) {
	t.Helper()
	mount, err := Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	if entries, err := os.ReadDir(mount); err == nil {
		for _, e := range entries {
			if e.IsDir() && netns.Stale(e.Name()) {
				os.Remove(filepath.Join(mount, e.Name()))
			}
		}
	}
	dir := filepath.Join(mount, netns.UniqueName("cg"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		for i := 0; i < 50; i++ { // the last child may still be exiting
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("cgroup %s left behind", dir)
	})
	return dir, f
}

// runIn runs a command inside ns, started directly in the cgroup behind
// cg (nil: the test's own cgroup), with no proxy settings.
func runIn(ns *netns.NS, cg *os.File, name string, args ...string) (string, error) {
	var out bytes.Buffer
	err := ns.Do(func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Env = netns.CleanEnv()
		cmd.Stdout, cmd.Stderr = &out, &out
		if cg != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
		}
		return cmd.Run()
	})
	return strings.TrimSpace(out.String()), err
}

// mappedClient connects an AF_INET6 socket to argv[1]:argv[2], sends an
// HTTP request and prints the response.
const mappedClient = `
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(5)
s.connect((sys.argv[1], int(sys.argv[2])))
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.decode().strip())
`

func TestLocalCapture(t *testing.T) {
	netns.RequirePrivileged(t, "ip", "python3", "iptables", "ip6tables", "iptables-save", "ip6tables-save", "curl", "dig")
	ns := netns.New(t, "local")
	// The "internet" inside this namespace only: real listeners on
	// addresses on lo, so a connection that escapes capture lands there.
	for _, a := range []string{"10.77.9.9/32", "10.77.9.53/32"} {
		ns.MustIP(t, "addr", "add", a, "dev", "lo")
	}
	for _, a := range []string{"fd77:9::9/128", "fd77:9::53/128"} {
		ns.MustIP(t, "addr", "add", a, "dev", "lo", "nodad")
	}
	cgPath, cgFD := tempCgroup(t)
	cgID, err := CgroupID(cgPath)
	if err != nil {
		t.Fatal(err)
	}

	real := &canary{}
	for _, a := range []string{"10.77.9.9:443", "10.77.9.9:8080", "[fd77:9::9]:443", "[fd77:9::9]:8080"} {
		go real.serveTCP(listenIn(t, ns, "tcp", a))
	}

	cfg := LocalConfig{
		Transparent4: netip.MustParseAddrPort("127.0.0.1:14323"),
		Transparent6: netip.MustParseAddrPort("[::1]:14323"),
		DNS4:         netip.MustParseAddrPort("127.0.0.1:14353"),
		DNS6:         netip.MustParseAddrPort("[::1]:14353"),
	}
	var local *Local
	if err := ns.Do(func() (err error) { local, err = AttachCgroup(cgPath, cfg); return err }); err != nil {
		t.Fatalf("attach: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			ns.Do(local.Close)
		}
	})

	echo := &origEcho{}
	lookup := func(c net.Conn) (string, error) {
		o, id, err := local.OriginalDst(c)
		return fmt.Sprintf("%s cg=%d", o, id), err
	}
	go echo.serve(listenIn(t, ns, "tcp", cfg.Transparent4.String()), lookup)
	go echo.serve(listenIn(t, ns, "tcp", cfg.Transparent6.String()), lookup)

	answer := netip.MustParseAddr("10.77.2.99")
	var dnsMu sync.Mutex
	var dnsSeen []string
	for _, a := range []string{cfg.DNS4.String(), cfg.DNS6.String()} {
		pc := listenPacketIn(t, ns, "udp", a)
		go func() {
			buf := make([]byte, 1500)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				src := from.(*net.UDPAddr).AddrPort()
				o, id, err := local.DNSOrigin(src)
				dnsMu.Lock()
				dnsSeen = append(dnsSeen, fmt.Sprintf("%s cg=%d err=%v", o, id, err))
				dnsMu.Unlock()
				if reply, ok := dnsReply(buf[:n], answer); ok {
					pc.WriteTo(reply, from)
				}
			}
		}()
		go serveDNSTCP(listenIn(t, ns, "tcp", a), answer)
	}

	t.Run("tcp 80/443 from the cgroup lands on the broker", func(t *testing.T) {
		for _, tc := range []struct{ url, want string }{
			{"http://10.77.9.9:443/", fmt.Sprintf("orig=10.77.9.9:443 cg=%d", cgID)},
			{"http://10.77.9.9/", fmt.Sprintf("orig=10.77.9.9:80 cg=%d", cgID)},
			{"http://[fd77:9::9]:443/", fmt.Sprintf("orig=[fd77:9::9]:443 cg=%d", cgID)},
		} {
			out, err := runIn(ns, cgFD, "curl", "-sS", "--max-time", "5", tc.url)
			if err != nil || out != tc.want {
				t.Errorf("curl %s in the cgroup = %q, %v; want %q", tc.url, out, err, tc.want)
			}
		}
		// An IPv6 socket connecting to an IPv4-mapped address goes
		// through connect6 and the IPv4 listener.
		out, err := runIn(ns, cgFD, "python3", "-c", mappedClient, "::ffff:10.77.9.9", "443")
		if want := fmt.Sprintf("orig=10.77.9.9:443 cg=%d", cgID); err != nil || !strings.HasSuffix(out, want) {
			t.Errorf("v4-mapped connect from an IPv6 socket = %q, %v; want %q", out, err, want)
		}
		if n := real.conns.Load(); n != 0 {
			t.Errorf("the real destination saw %d connections from the cgroup", n)
		}
	})

	t.Run("a process outside the cgroup is untouched", func(t *testing.T) {
		before := real.conns.Load()
		if err := dialFrom(ns, "tcp", "10.77.9.9:443", 3*time.Second); err != nil {
			t.Fatalf("outside dial: %v", err)
		}
		waitFor(t, func() bool { return real.conns.Load() == before+1 }, "the outside connection at the real listener")
	})

	t.Run("other tcp ports and other udp are denied", func(t *testing.T) {
		before := real.conns.Load()
		for _, url := range []string{"http://10.77.9.9:8080/", "http://[fd77:9::9]:8080/", "http://127.0.0.1:14323/"} {
			out, err := runIn(ns, cgFD, "curl", "-sS", "--max-time", "3", url)
			if err == nil {
				t.Errorf("curl %s in the cgroup succeeded: %q", url, out)
			}
		}
		out, err := runIn(ns, cgFD, "dig", "@10.77.9.53", "-p", "5353", "+time=1", "+tries=1", "+short", "x.test")
		if err == nil && out == answer.String() {
			t.Errorf("udp to port 5353 was answered: %q", out)
		}
		if n := real.conns.Load(); n != before {
			t.Errorf("denied connects reached the real listener (%d)", n-before)
		}
	})

	t.Run("dns to any resolver is answered by the proxy with the source restored", func(t *testing.T) {
		for _, args := range [][]string{
			{"@10.77.9.53", "+notcp"},
			{"@fd77:9::53", "+notcp"},
			{"@10.77.9.53", "+tcp"},
		} {
			out, err := runIn(ns, cgFD, "dig", append(args, "+time=2", "+tries=1", "+short", "api.example.test", "A")...)
			// dig ignores a reply whose source is not the server it asked,
			// so an answer proves recvmsg restored the source.
			if err != nil || out != answer.String() {
				t.Errorf("dig %v in the cgroup = %q, %v; want %s", args, out, err, answer)
			}
		}
		dnsMu.Lock()
		defer dnsMu.Unlock()
		want := []string{fmt.Sprintf("10.77.9.53:53 cg=%d err=<nil>", cgID), fmt.Sprintf("[fd77:9::53]:53 cg=%d err=<nil>", cgID)}
		if strings.Join(dnsSeen, "|") != strings.Join(want, "|") {
			t.Errorf("DNS proxy identified %q, want %q", dnsSeen, want)
		}
	})

	t.Run("detached programs fail closed on the backstop", func(t *testing.T) {
		if err := local.Detach(); err != nil {
			t.Fatal(err)
		}
		before := real.conns.Load()
		for _, url := range []string{"http://10.77.9.9:443/", "http://10.77.9.9:8080/", "http://[fd77:9::9]:443/"} {
			out, err := runIn(ns, cgFD, "curl", "-sS", "--connect-timeout", "0.5", "--max-time", "2", url)
			if err == nil {
				t.Errorf("curl %s after detach succeeded: %q", url, out)
			}
		}
		if n := real.conns.Load(); n != before {
			t.Errorf("after detach the cgroup reached the real listener %d times", n-before)
		}
		// Outside the cgroup nothing changed.
		if err := dialFrom(ns, "tcp", "10.77.9.9:8080", 3*time.Second); err != nil {
			t.Errorf("outside dial after detach: %v", err)
		}
	})

	t.Run("close leaves no rule behind", func(t *testing.T) {
		closed = true
		if err := ns.Do(local.Close); err != nil {
			t.Fatal(err)
		}
		for _, bin := range []string{"iptables-save", "ip6tables-save"} {
			out, err := ns.Command(context.Background(), bin).CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v", bin, err)
			}
			if strings.Contains(string(out), "AV-") {
				t.Errorf("%s after close:\n%s", bin, out)
			}
		}
		// And the programs are gone: the cgroup reaches the real listener.
		before := real.conns.Load()
		if _, err := runIn(ns, cgFD, "curl", "-sS", "--max-time", "1", "http://10.77.9.9:8080/"); err != nil {
			t.Logf("curl after close: %v (the canary reads until EOF, so curl may time out)", err)
		}
		waitFor(t, func() bool { return real.conns.Load() == before+1 }, "the cgroup's connection at the real listener after close")
	})
}
