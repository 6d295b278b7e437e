package main

import (
	"bufio"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/agentvault/agent-vault/admin"
	"github.com/agentvault/agent-vault/dnsproxy"
	"github.com/agentvault/agent-vault/mitm"
	"github.com/agentvault/agent-vault/mitm/ca"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/redirect"
	"github.com/agentvault/agent-vault/store"
)

// loadCA returns the appliance's root CA, creating and storing it (key
// encrypted with the store's data key) on first start.
func loadCA(st *store.Store, log *slog.Logger) (*ca.Authority, error) {
	certDER, keyDER, err := st.CA()
	if errors.Is(err, store.ErrNotFound) {
		certDER, keyDER, err = ca.Generate(time.Now())
		if err != nil {
			return nil, fmt.Errorf("generate root ca: %w", err)
		}
		if err := st.PutCA(certDER, keyDER); err != nil {
			return nil, fmt.Errorf("store root ca: %w", err)
		}
		log.Info("created the root CA agents must trust (agent-vault ca export)")
	} else if err != nil {
		return nil, fmt.Errorf("load root ca: %w", err)
	}
	authority, err := ca.New(certDER, keyDER, ca.Options{})
	clear(keyDER)
	if err != nil {
		return nil, fmt.Errorf("load root ca: %w", err)
	}
	return authority, nil
}

// snapshotBuilder turns the store's records into a policy snapshot,
// resolving each local-mode agent's cgroup path to the id the BPF programs
// report.
type snapshotBuilder struct {
	st          *store.Store
	cgroupMount string // "" when cgroup v2 is not mounted
	log         *slog.Logger
}

func (b *snapshotBuilder) build() (*policy.Snapshot, error) {
	in, err := b.st.SnapshotInput()
	if err != nil {
		return nil, err
	}
	for i := range in.Agents {
		a := &in.Agents[i]
		if a.Cgroup == "" || b.cgroupMount == "" {
			continue
		}
		id, err := redirect.CgroupID(filepath.Join(b.cgroupMount, a.Cgroup))
		if err != nil {
			// the cgroup may be created later (agent-vault run does so); the
			// agent simply cannot be recognised by cgroup until then
			b.log.Debug("agent cgroup not found", "agent", a.Name, "cgroup", a.Cgroup)
			continue
		}
		a.CgroupID = id
	}
	return policy.NewSnapshot(in), nil
}

// rebuild makes a new snapshot and hands it to apply; on failure the
// previous snapshot stays in force (and the failure is logged).
func (b *snapshotBuilder) rebuild(apply func(*policy.Snapshot)) {
	snap, err := b.build()
	if err != nil {
		b.log.Error("policy snapshot rebuild failed; keeping the previous one", "err", err)
		return
	}
	apply(snap)
}

// upstreamRoots is the system roots plus --upstream-ca.
func upstreamRoots(file string) (*x509.CertPool, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if file == "" {
		return pool, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, withHint(fmt.Errorf("read --upstream-ca: %w", err), "give a PEM file of CA certificates")
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, withHint(fmt.Errorf("--upstream-ca %s holds no PEM certificate", file), "give a PEM file of CA certificates")
	}
	return pool, nil
}

// upstreamDNS is --upstream-dns or the first nameserver of /etc/resolv.conf,
// as host:port.
func upstreamDNS(flag string) (string, error) {
	addr := flag
	if addr == "" {
		f, err := os.Open("/etc/resolv.conf")
		if err != nil {
			return "", withHint(fmt.Errorf("no --upstream-dns and no /etc/resolv.conf: %w", err), "pass --upstream-dns HOST[:PORT]")
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 2 && fields[0] == "nameserver" {
				addr = fields[1]
				break
			}
		}
		if addr == "" {
			return "", withHint(errors.New("no nameserver in /etc/resolv.conf"), "pass --upstream-dns HOST[:PORT]")
		}
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(strings.Trim(addr, "[]"), "53")
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", withHint(fmt.Errorf("--upstream-dns %q: %w", flag, err), "use HOST[:PORT]")
	}
	return addr, nil
}

// addrPortOf returns a listener address as netip.AddrPort.
func addrPortOf(a net.Addr) netip.AddrPort {
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// markControl is the bypass mark setter when a redirect mode is active
// (setting SO_MARK needs CAP_NET_ADMIN, which mode none does not ask for).
func markControl(mode string) func(network, address string, c syscall.RawConn) error {
	if mode == "none" || mode == "" {
		return nil
	}
	return redirect.MarkControl
}

// ipv6Enabled reports whether the kernel has IPv6 turned on.
func ipv6Enabled() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	return err == nil && strings.TrimSpace(string(b)) == "0"
}

// dataPathListeners are the bound sockets of the data path.
type dataPathListeners struct {
	proxy       net.Listener // nil when --proxy-addr is empty
	transparent net.Listener
	dnsUDP      net.PacketConn
	dnsTCP      net.Listener
}

func (l *dataPathListeners) close() {
	if l.proxy != nil {
		l.proxy.Close()
	}
	if l.transparent != nil {
		l.transparent.Close()
	}
	if l.dnsUDP != nil {
		l.dnsUDP.Close()
	}
	if l.dnsTCP != nil {
		l.dnsTCP.Close()
	}
}

func bindDataPath(cfg *serverConfig) (*dataPathListeners, error) {
	var l dataPathListeners
	var err error
	fail := func(what, addr, flag string, err error) (*dataPathListeners, error) {
		l.close()
		return nil, withHint(fmt.Errorf("listen on %s address %s: %w", what, addr, err), "choose another "+flag)
	}
	if cfg.ProxyAddr != "" {
		if l.proxy, err = net.Listen("tcp", cfg.ProxyAddr); err != nil {
			return fail("proxy", cfg.ProxyAddr, "--proxy-addr", err)
		}
	}
	if l.transparent, err = net.Listen("tcp", cfg.TransparentAddr); err != nil {
		return fail("transparent", cfg.TransparentAddr, "--transparent-addr", err)
	}
	if l.dnsUDP, err = net.ListenPacket("udp", cfg.DNSAddr); err != nil {
		return fail("DNS", cfg.DNSAddr, "--dns-addr", err)
	}
	// TCP on the port UDP got (they differ only when the flag says :0)
	tcpAddr := cfg.DNSAddr
	if ap := addrPortOf(l.dnsUDP.LocalAddr()); ap.IsValid() {
		host, _, _ := net.SplitHostPort(cfg.DNSAddr)
		tcpAddr = net.JoinHostPort(host, fmt.Sprint(ap.Port()))
	}
	if l.dnsTCP, err = net.Listen("tcp", tcpAddr); err != nil {
		return fail("DNS (tcp)", tcpAddr, "--dns-addr", err)
	}
	return &l, nil
}

// selfAddrs lists the broker's own listen addresses.
func (l *dataPathListeners) selfAddrs(admin net.Addr) []netip.AddrPort {
	out := []netip.AddrPort{addrPortOf(admin), addrPortOf(l.transparent.Addr()), addrPortOf(l.dnsTCP.Addr())}
	if l.proxy != nil {
		out = append(out, addrPortOf(l.proxy.Addr()))
	}
	return out
}

// identifyDNSConn is the DNS proxy's IdentifyConn: a TCP connection to the
// DNS listener is identified by the eBPF record of the captured connection
// in local mode (keyed by its 4-tuple and consumed here, once), by its
// source address otherwise.
func (c *capture) identifyDNSConn(current func() *policy.Snapshot) func(net.Conn) (string, bool) {
	return func(conn net.Conn) (string, bool) {
		snap := current()
		if snap == nil {
			return "", false
		}
		var a *policy.Agent
		var ok bool
		if l := c.local.Load(); l != nil {
			_, id, err := l.OriginalDst(conn)
			if err != nil {
				return "", false
			}
			a, ok = snap.AgentByCgroupID(id)
		} else {
			a, ok = snap.AgentBySource(addrPortOf(conn.RemoteAddr()).Addr().Unmap())
		}
		if !ok {
			return "", false
		}
		return a.Name, true
	}
}

// newDNSProxy builds the DNS proxy for the chosen capture mode.
func newDNSProxy(cfg *serverConfig, upstream string, log *slog.Logger, st *store.Store,
	identify func(netip.AddrPort) (string, bool), identifyConn func(net.Conn) (string, bool)) (*dnsproxy.Proxy, error) {
	dialer := &net.Dialer{Timeout: 2 * time.Second, Control: markControl(cfg.Redirect)}
	return dnsproxy.New(dnsproxy.Config{
		Upstream:     upstream,
		Dialer:       dialer,
		Identify:     identify,
		IdentifyConn: identifyConn,
		IPv6:         ipv6Enabled(),
		AllowPrivate: cfg.AllowPrivate,
		Audit:        st,
		Logger:       log,
	})
}

// newBroker builds the data path's broker.
func newBroker(cfg *serverConfig, authority *ca.Authority, st *store.Store, roots *x509.CertPool,
	upstream string, origin func(net.Conn) (mitm.Origin, error), pins *dnsproxy.Proxy,
	self []netip.AddrPort, log *slog.Logger) (*mitm.Broker, error) {
	return mitm.New(mitm.Config{
		CA:                    authority,
		Secrets:               st,
		Audit:                 st,
		Origin:                origin,
		UpstreamDNS:           upstream,
		DestinationAllowed:    pins.Pinned, // the DNS proxy's pins for (agent, name)
		HoldDestination:       pins.Hold,   // kept alive while a connection uses them
		UpstreamRoots:         roots,
		AllowPrivateUpstreams: cfg.AllowPrivate,
		DialControl:           markControl(cfg.Redirect),
		SelfAddrs:             self,
		// agent-vault.internal: /v1/services and /v1/proposals, the agent
		// identified by the data path (network identity or proxy token)
		Internal: admin.NewAgentAPI(st, func(r *http.Request) (policy.Agent, bool) {
			return mitm.AgentFromContext(r.Context())
		}, log),
		Logger: log,
	})
}
