package mitm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agentvault/agent-vault/policy"
)

// connKind is how a connection reached the broker.
type connKind uint8

const (
	kindTransparentTLS connKind = iota + 1
	kindTransparentPlain
	kindTunnel     // CONNECT through the explicit proxy, TLS terminated inside
	kindProxyPlain // an absolute-form request to the explicit proxy
)

func (k connKind) String() string {
	switch k {
	case kindTransparentTLS:
		return "transparent"
	case kindTransparentPlain:
		return "transparent-http"
	case kindTunnel:
		return "connect"
	case kindProxyPlain:
		return "proxy-http"
	}
	return "unknown"
}

func (k connKind) tls() bool { return k == kindTransparentTLS || k == kindTunnel }

// connState is what the broker knows about one agent connection. Fields set
// before the connection is handed to the HTTP server are read-only after;
// the destination binding is guarded by mu (HTTP/2 serves streams
// concurrently).
type connState struct {
	kind    connKind
	agent   string // "" when the agent is unknown
	peer    netip.AddrPort
	origin  Origin // transparent
	name    string // the connection's identity: SNI, CONNECT host, or the first Host of a plain connection
	port    int    // the upstream port
	connect string // CONNECT host the SNI must equal

	h1     bool        // served by serveH1 (set before it starts)
	h1Busy atomic.Bool // serveH1 is inside a request (Shutdown waits for it)

	mu      sync.Mutex
	bound   bool
	dest    dest
	release func() // ends the pin hold of a bound transparent destination
}

// releaseHold ends the connection's pin hold, once.
func (st *connState) releaseHold() {
	st.mu.Lock()
	r := st.release
	st.release = nil
	st.mu.Unlock()
	if r != nil {
		r()
	}
}

// dest is a validated upstream: the only addresses the broker may dial for
// this connection's name.
type dest struct {
	ips  []netip.Addr
	port int
}

func peerAddr(c net.Conn) netip.AddrPort {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	return ap
}

// handleTransparent identifies the agent of a redirected connection, then
// terminates TLS or hands plain HTTP to the inner server.
func (b *Broker) handleTransparent(c net.Conn) {
	peer := peerAddr(c)
	org, err := b.cfg.Origin(c)
	if err != nil {
		b.log.Warn("original destination unknown; closing", "peer", peer.String(), "err", err)
		b.auditConn(nil, "", peer, "", "origin_unknown")
		c.Close()
		return
	}
	org.OriginalDst = netip.AddrPortFrom(org.OriginalDst.Addr().Unmap(), org.OriginalDst.Port())
	if b.isSelf(c, org.OriginalDst) {
		b.log.Warn("connection to the broker itself refused", "peer", peer.String(), "dst", org.OriginalDst.String())
		b.auditConn(nil, "", peer, "", "destination_is_broker")
		c.Close()
		return
	}
	snap := b.snap.Load()
	var agent *policy.Agent
	if org.CgroupID != 0 {
		agent, _ = snap.AgentByCgroupID(org.CgroupID)
	} else {
		agent, _ = snap.AgentBySource(peer.Addr())
	}
	name := ""
	if agent != nil {
		name = agent.Name
	}
	tc := b.track(c, name)
	st := &connState{agent: name, peer: peer, origin: org, port: int(org.OriginalDst.Port())}
	b.setState(tc, st)

	// One byte tells TLS (a handshake record) from plain HTTP.
	c.SetDeadline(time.Now().Add(b.cfg.HandshakeTimeout))
	var first [1]byte
	if _, err := c.Read(first[:]); err != nil {
		tc.Close()
		return
	}
	tc.prefix = []byte{first[0]}
	if first[0] == 0x16 {
		st.kind = kindTransparentTLS
		b.terminate(tc, st)
		return
	}
	st.kind = kindTransparentPlain
	c.SetDeadline(time.Time{})
	if !b.innerLn.push(tc) {
		tc.Close()
	}
}

// isSelf reports whether dst is one of the broker's own listen addresses.
func (b *Broker) isSelf(c net.Conn, dst netip.AddrPort) bool {
	if la, ok := c.LocalAddr().(*net.TCPAddr); ok {
		l := la.AddrPort()
		if l.Addr().Unmap() == dst.Addr() && l.Port() == dst.Port() {
			return true
		}
	}
	for _, s := range b.cfg.SelfAddrs {
		if s.Port() != dst.Port() {
			continue
		}
		if !s.Addr().IsValid() || s.Addr().IsUnspecified() || s.Addr().Unmap() == dst.Addr() {
			return true
		}
	}
	return false
}

// errDenied ends a handshake with an alert; the reason was logged and audited.
var errDenied = errors.New("connection denied by agent-vault")

// terminate runs the TLS handshake, deciding on the ClientHello, and hands
// the terminated connection to the inner HTTP server.
func (b *Broker) terminate(tc *trackedConn, st *connState) {
	timer := time.NewTimer(b.cfg.HandshakeTimeout)
	select {
	case b.hs <- struct{}{}:
		timer.Stop()
	case <-timer.C:
		b.log.Warn("too many concurrent handshakes; closing", "peer", st.peer.String())
		tc.Close()
		return
	}
	conn := tls.Server(tc, b.tlsOuter)
	tc.SetDeadline(time.Now().Add(b.cfg.HandshakeTimeout))
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.HandshakeTimeout)
	err := conn.HandshakeContext(ctx)
	cancel()
	<-b.hs
	if err != nil {
		if !errors.Is(err, errDenied) {
			b.log.Debug("tls handshake failed", "peer", st.peer.String(), "mode", st.kind.String(), "err", err)
		}
		tc.Close()
		return
	}
	tc.SetDeadline(time.Time{})
	if conn.ConnectionState().NegotiatedProtocol != "h2" {
		b.mu.Lock()
		st.h1 = true // read by drainH1 under b.mu
		b.mu.Unlock()
		b.serveH1(conn, st) // in this goroutine, which the broker tracks
		return
	}
	if !b.innerLn.push(conn) {
		tc.Close()
	}
}

// decide runs inside GetConfigForClient: the SNI becomes the connection's
// identity, and the destination is bound when the name has a service.
func (b *Broker) decide(hello *tls.ClientHelloInfo, st *connState) (*tls.Config, error) {
	name := policy.NormalizeHost(hello.ServerName)
	deny := func(reason string) (*tls.Config, error) {
		b.log.Info("tls connection denied", "agent", st.agent, "peer", st.peer.String(), "mode", st.kind.String(),
			"sni", name, "dst", st.origin.OriginalDst.String(), "reason", reason)
		b.auditConn(hello.Context(), st.agent, st.peer, name, reason)
		return nil, errDenied
	}
	switch {
	case name == "":
		return deny("no_sni")
	case st.kind == kindTunnel && name != st.connect:
		return deny("sni_mismatch")
	case st.agent == "":
		return deny("agent_unknown")
	}
	if !validSNI(name) {
		return deny("invalid_sni")
	}
	st.name = name
	if name != policy.ReservedHost {
		snap := b.snap.Load()
		a, ok := snap.Agent(st.agent)
		// An inactive agent, or a name without a service, still completes
		// the handshake so the agent can read a 403 that says why; nothing is
		// sent upstream on such a connection.
		// A tunnel's upstream is resolved at its first request, where a
		// refusal can be answered readably; a transparent connection's
		// original destination is checked here, before anything else.
		if st.kind == kindTransparentTLS && ok && a.Active(b.now()) && snap.HostAllowed(a.Vault, name) {
			if err := b.bind(hello.Context(), st); err != nil {
				var be *bindError
				if errors.As(err, &be) {
					return deny(be.reason)
				}
				return deny("destination_error")
			}
		}
	}
	leaf, err := b.cfg.CA.Leaf(name)
	if err != nil {
		b.log.Error("minting a leaf certificate failed", "sni", name, "err", err)
		return deny("leaf_error")
	}
	return tlsServerConfig(leaf, st.peer), nil
}

// bindError is a refused destination binding.
type bindError struct {
	reason string // stable: audit reason
	status int
	msg    string
}

func (e *bindError) Error() string { return e.msg }

// bind validates the upstream of the connection's name once; later calls
// return the memoized result.
func (b *Broker) bind(ctx context.Context, st *connState) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.bound {
		return nil
	}
	if ctx == nil {
		ctx = context.Background()
	}
	var d dest
	var err error
	switch st.kind {
	case kindTransparentTLS, kindTransparentPlain:
		d, err = b.bindOriginal(ctx, st)
	default:
		d, err = b.bindResolved(ctx, st.name, st.port)
	}
	if err != nil {
		return err
	}
	st.dest, st.bound = d, true
	if hold := b.cfg.HoldDestination; hold != nil && (st.kind == kindTransparentTLS || st.kind == kindTransparentPlain) && st.agent != "" {
		st.release = hold(st.agent, st.name, st.origin.OriginalDst.Addr().Unmap())
	}
	return nil
}

// bindOriginal accepts a transparent connection's original destination only
// if it belongs to the name: the broker resolved it for the name itself, or
// DestinationAllowed (the DNS proxy's pins) vouches for it.
func (b *Broker) bindOriginal(ctx context.Context, st *connState) (dest, error) {
	ip := st.origin.OriginalDst.Addr().Unmap()
	d := dest{ips: []netip.Addr{ip}, port: int(st.origin.OriginalDst.Port())}
	if !b.upstreamIPAllowed(ip) {
		return dest{}, &bindError{"private_upstream", 403, fmt.Sprintf("the destination address %s of %s is in a range the broker does not forward to", ip, st.name)}
	}
	if f := b.cfg.DestinationAllowed; f != nil && f(st.agent, st.name, ip) {
		return d, nil
	}
	addrs, err := b.res.lookup(ctx, st.name, 0)
	if err == nil && containsAddr(addrs, ip) {
		return d, nil
	}
	// The agent may hold a fresher answer than ours (round-robin DNS): look
	// again once if our entry is not brand new.
	addrs, err2 := b.res.lookup(ctx, st.name, 2*time.Second)
	if err2 == nil && containsAddr(addrs, ip) {
		return d, nil
	}
	if err != nil && err2 != nil {
		return dest{}, &bindError{"resolve_failed", 502, fmt.Sprintf("the broker could not resolve %s", st.name)}
	}
	return dest{}, &bindError{"destination_not_resolved", 403, fmt.Sprintf("the connection's destination %s is not an address of %s", ip, st.name)}
}

// bindResolved resolves a name for the explicit proxy and keeps the
// addresses the broker may dial.
func (b *Broker) bindResolved(ctx context.Context, name string, port int) (dest, error) {
	addrs, err := b.res.lookup(ctx, name, 0)
	if err != nil {
		return dest{}, &bindError{"resolve_failed", 502, fmt.Sprintf("the broker could not resolve %s", name)}
	}
	var ok []netip.Addr
	for _, a := range addrs {
		if b.upstreamIPAllowed(a) {
			ok = append(ok, a)
		}
	}
	if len(ok) == 0 {
		return dest{}, &bindError{"private_upstream", 403, fmt.Sprintf("%s resolves only to addresses the broker does not forward to", name)}
	}
	return dest{ips: ok, port: port}, nil
}

func containsAddr(list []netip.Addr, a netip.Addr) bool {
	for _, x := range list {
		if x.Unmap() == a {
			return true
		}
	}
	return false
}

// validSNI accepts a DNS name of letters, digits, '-' and '.', without empty
// labels or labels that start or end with '-' (the CA would refuse to mint
// for one), and not an IP address. Single-label names ("localhost") pass: no
// service can be declared for one, so they end in 403 no_service.
func validSNI(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return false
	}
	label := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '.':
			if label == 0 || name[i-1] == '-' {
				return false
			}
			label = 0
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-' && label > 0:
			label++
			if label > 63 {
				return false
			}
		default:
			return false // a label starting with '-' included
		}
	}
	return label > 0 && name[len(name)-1] != '-'
}
