package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentvault/agent-vault/admin/client"
	"github.com/agentvault/agent-vault/bpf"
	"github.com/agentvault/agent-vault/redirect"
)

// doctorCheck is one line of `agent-vault doctor`.
type doctorCheck struct {
	Name     string `json:"name"`
	OK       bool   `json:"ok"`
	Required bool   `json:"required"` // for the --redirect mode asked about
	Detail   string `json:"detail"`
	Fix      string `json:"fix,omitempty"`
}

type doctorReport struct {
	OK       bool          `json:"ok"` // every required check passed
	Redirect string        `json:"redirect"`
	Checks   []doctorCheck `json:"checks"`
}

type doctorOptions struct {
	redirect                                   string
	adminAddr, proxyAddr, transparent, dnsAddr string
	asJSON                                     bool
}

func (a *app) doctorCmd() *cobra.Command {
	var o doctorOptions
	cmd := &cobra.Command{
		Use:   "doctor [--redirect none|gateway|local] [--json]",
		Short: "Check kernel features, cgroup v2, iptables, BPF, ports and CA trust",
		Long: `Checks what the appliance needs on this machine and prints one line per check:
OK or MISSING, and how to fix what is missing. --redirect says which capture
mode to check for (default local, the most demanding): a check that mode needs
and that fails makes doctor exit 1; other failures are reported only. The port
checks take the server's address flags, and pass when the port is free or when
an agent-vault server already serves it.`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch o.redirect {
			case "none", "gateway", "local":
			default:
				return usagef("--redirect must be none, gateway or local, not %q", o.redirect)
			}
			rep := a.doctor(cmd.Context(), o)
			if o.asJSON {
				if err := a.printJSON(rep); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
				for _, c := range rep.Checks {
					status := "OK"
					if !c.OK {
						status = "MISSING"
						if !c.Required {
							status = "MISSING (optional)"
						}
					}
					line := c.Detail
					if !c.OK && c.Fix != "" {
						line += "; fix: " + c.Fix
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\n", status, c.Name, line)
				}
				tw.Flush()
			}
			if !rep.OK {
				return withHint(fmt.Errorf("doctor: something --redirect %s needs is missing", o.redirect), "fix the MISSING lines above")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.redirect, "redirect", "local", "the capture mode to check for: none, gateway or local")
	f.StringVar(&o.adminAddr, "admin-addr", "127.0.0.1:14321", "the server's --admin-addr")
	f.StringVar(&o.proxyAddr, "proxy-addr", "127.0.0.1:14322", "the server's --proxy-addr")
	f.StringVar(&o.transparent, "transparent-addr", ":14323", "the server's --transparent-addr")
	f.StringVar(&o.dnsAddr, "dns-addr", ":14353", "the server's --dns-addr")
	f.BoolVar(&o.asJSON, "json", false, "print one JSON document")
	return cmd
}

func (a *app) doctor(ctx context.Context, o doctorOptions) doctorReport {
	mode := o.redirect
	kernel := mode == "gateway" || mode == "local"
	rep := doctorReport{OK: true, Redirect: mode}
	add := func(c doctorCheck) {
		if c.OK {
			c.Fix = ""
		}
		rep.Checks = append(rep.Checks, c)
		if c.Required && !c.OK {
			rep.OK = false
		}
	}

	var uts syscall.Utsname
	if err := syscall.Uname(&uts); err == nil {
		add(doctorCheck{Name: "kernel", OK: true, Detail: "Linux " + utsString(uts.Release[:])})
	}
	root := os.Geteuid() == 0
	add(doctorCheck{Name: "root", OK: root, Required: kernel,
		Detail: map[bool]string{true: "running as root", false: "not running as root"}[root],
		Fix:    "run the server (and this check) as root; without root use --redirect none and 'agent-vault run --mode proxy'"})

	mount, err := redirect.Cgroup2Mount()
	add(doctorCheck{Name: "cgroup v2", OK: err == nil, Required: mode == "local",
		Detail: ifElse(err == nil, "mounted at "+mount, "no cgroup2 mount"),
		Fix:    "mount -t cgroup2 none /sys/fs/cgroup (or boot with systemd.unified_cgroup_hierarchy=1); or use --redirect gateway"})

	add(bpfCheck(mode == "local", root))

	for _, tool := range []string{"iptables", "ip6tables"} {
		add(iptablesCheck(tool, kernel))
	}

	fwd4 := readSysctl("net/ipv4/ip_forward") == "1"
	fwd6 := readSysctl("net/ipv6/conf/all/forwarding") == "1"
	add(doctorCheck{Name: "ip forwarding", OK: fwd4, Required: mode == "gateway",
		Detail: fmt.Sprintf("net.ipv4.ip_forward=%s net.ipv6.conf.all.forwarding=%s", readSysctl("net/ipv4/ip_forward"), readSysctl("net/ipv6/conf/all/forwarding")),
		Fix:    "sysctl -w net.ipv4.ip_forward=1 (gateway mode routes the agents' traffic; the broker answers it)"})
	if fwd4 && !fwd6 && ipv6Enabled() {
		add(doctorCheck{Name: "ipv6 forwarding", OK: false, Detail: "IPv6 is on but not forwarded",
			Fix: "sysctl -w net.ipv6.conf.all.forwarding=1 if agents use IPv6 (the gateway fails closed otherwise)"})
	}
	add(doctorCheck{Name: "ipv6", OK: true, Detail: ifElse(ipv6Enabled(), "enabled (captured like IPv4)", "disabled (IPv6 fails closed)")})

	running := adminHealthy(ctx, o.adminAddr)
	for _, p := range []struct{ name, network, addr string }{
		{"admin port", "tcp", o.adminAddr}, {"proxy port", "tcp", o.proxyAddr},
		{"transparent port", "tcp", o.transparent}, {"dns port (udp)", "udp", o.dnsAddr}, {"dns port (tcp)", "tcp", o.dnsAddr},
	} {
		if p.addr == "" {
			continue
		}
		add(portCheck(p.name, p.network, p.addr, running))
	}

	add(a.caTrustCheck(ctx, o.adminAddr, running))
	return rep
}

func ifElse(c bool, yes, no string) string {
	if c {
		return yes
	}
	return no
}

func utsString(b []int8) string {
	var s strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		s.WriteByte(byte(c))
	}
	return s.String()
}

func readSysctl(path string) string {
	b, err := os.ReadFile("/proc/sys/" + path)
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// bpfCheck loads (and frees) the local-mode programs: the verifier of this
// kernel must accept them.
func bpfCheck(required, root bool) doctorCheck {
	c := doctorCheck{Name: "eBPF", Required: required,
		Fix: "run as root on a kernel with cgroup-BPF (CONFIG_CGROUP_BPF, BTF; 5.8 or newer); or use --redirect gateway"}
	if !root {
		c.Detail = "cannot load the capture programs without root"
		return c
	}
	lo := netip.MustParseAddr("127.0.0.1")
	objs, err := bpf.Load(bpf.Config{Transparent4: netip.AddrPortFrom(lo, 14323), DNS4: netip.AddrPortFrom(lo, 14353)})
	if err != nil {
		c.Detail = "the capture programs do not load: " + oneLine(err.Error())
		return c
	}
	objs.Close()
	c.OK, c.Detail = true, fmt.Sprintf("the %d capture programs load", len(objs.Programs()))
	return c
}

// iptablesCheck finds the tool and its backend (nf_tables or legacy).
func iptablesCheck(tool string, required bool) doctorCheck {
	c := doctorCheck{Name: tool, Required: required, Fix: "install it (Debian/Ubuntu: apt-get install iptables)"}
	path, err := exec.LookPath(tool)
	if err != nil {
		c.Detail = "not found on PATH"
		return c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").CombinedOutput()
	if err != nil {
		c.Detail = fmt.Sprintf("%s --version failed: %v", path, err)
		return c
	}
	v := strings.TrimSpace(string(out))
	backend := "legacy"
	if strings.Contains(v, "nf_tables") {
		backend = "nft"
	}
	c.OK, c.Detail = true, fmt.Sprintf("%s: backend %s", v, backend)
	return c
}

// portCheck passes when the address is free, or when a running agent-vault
// server holds it.
func portCheck(name, network, addr string, serverRunning bool) doctorCheck {
	c := doctorCheck{Name: name, Required: true, Fix: "stop what uses " + addr + ", or give the server another address flag"}
	var err error
	if network == "udp" {
		var pc net.PacketConn
		if pc, err = net.ListenPacket("udp", addr); err == nil {
			pc.Close()
		}
	} else {
		var l net.Listener
		if l, err = net.Listen("tcp", addr); err == nil {
			l.Close()
		}
	}
	switch {
	case err == nil:
		c.OK, c.Detail = true, addr+" is free"
	case errors.Is(err, syscall.EADDRINUSE) && serverRunning:
		c.OK, c.Detail = true, addr+" is in use by the running agent-vault server"
	case errors.Is(err, syscall.EADDRINUSE):
		c.Detail = addr + " is in use by another program"
	default:
		c.Detail = fmt.Sprintf("cannot listen on %s: %v", addr, err)
	}
	return c
}

// adminHealthy reports whether an agent-vault server answers on addr.
func adminHealthy(ctx context.Context, addr string) bool {
	if addr == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := client.New("http://" + addr)
	if err != nil {
		return false
	}
	h, err := c.Health(ctx)
	return err == nil && h.Status != ""
}

// caTrustCheck tells whether this machine's trust store holds the running
// appliance's root (agents on this machine need that, or the CA variables
// agent-vault run sets).
func (a *app) caTrustCheck(ctx context.Context, adminAddr string, running bool) doctorCheck {
	c := doctorCheck{Name: "CA trust",
		Fix: "agent-vault ca export -o /usr/local/share/ca-certificates/agent-vault.crt && update-ca-certificates (or start agents with 'agent-vault run', which points them at the CA)"}
	if !running {
		c.OK, c.Detail = true, "no server running at "+adminAddr+"; after it starts, agents must trust its CA (agent-vault ca export)"
		return c
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	cl, err := client.New("http://" + adminAddr)
	if err != nil {
		c.Detail = err.Error()
		return c
	}
	pemBytes, err := cl.CACert(ctx)
	if err != nil {
		c.Detail = "cannot fetch the CA: " + oneLine(err.Error())
		return c
	}
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		c.Detail = "the server's CA is not PEM"
		return c
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		c.Detail = "the server's CA does not parse: " + err.Error()
		return c
	}
	pool, err := x509.SystemCertPool()
	if err == nil && pool != nil {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool}); err == nil {
			c.OK, c.Detail = true, "the system trust store holds the appliance's root CA"
			return c
		}
	}
	c.Detail = "the system trust store does not hold the appliance's root CA (" + cert.Subject.CommonName + ")"
	return c
}
