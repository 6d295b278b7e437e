package mitm

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

type frontConnKey struct{}

func (b *Broker) frontConnContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*trackedConn); ok {
		return context.WithValue(ctx, frontConnKey{}, tc)
	}
	return ctx
}

// serveProxy is the explicit proxy: CONNECT tunnels whose TLS the broker
// terminates exactly like a transparent connection, and absolute-form plain
// HTTP requests, which never carry a credential.
func (b *Broker) serveProxy(w http.ResponseWriter, r *http.Request) {
	tc, _ := r.Context().Value(frontConnKey{}).(*trackedConn)
	if tc == nil {
		writeAgentError(w, http.StatusInternalServerError, CodeBadRequest, "connection state missing", "")
		return
	}
	peer := peerAddr(tc)
	agent, ok := b.proxyAgent(w, r, peer)
	if !ok {
		return
	}
	b.retrack(tc, agent.Name)
	if r.Method == http.MethodConnect {
		b.handleConnect(w, r, tc, agent, peer)
		return
	}
	if r.URL.Scheme != "http" || r.URL.Host == "" {
		msg := "this is a proxy: send absolute-form http:// requests, or CONNECT for https"
		if r.URL.Scheme == "https" {
			msg = "use CONNECT for https:// URLs"
		}
		b.proxyDeny(w, r, agent, http.StatusBadRequest, CodeBadRequest, "bad_proxy_request", msg, "")
		return
	}
	host, port, ok := splitTarget(r.URL.Host, 80)
	if !ok {
		b.proxyDeny(w, r, agent, http.StatusBadRequest, CodeBadRequest, "bad_target", "the request URL's host is malformed", "")
		return
	}
	if _, err := netip.ParseAddr(host); err == nil {
		b.proxyDeny(w, r, agent, http.StatusForbidden, CodeNoService, "ip_literal",
			"requests are allowed by host name, not by address", proposalHint(host))
		return
	}
	if !validSNI(host) {
		b.proxyDeny(w, r, agent, http.StatusBadRequest, CodeBadRequest, "bad_target", "the request URL's host is not a valid host name", "")
		return
	}
	st := &connState{kind: kindProxyPlain, agent: agent.Name, peer: peer, name: host, port: port}
	b.handle(w, r, st)
}

// proxyAgent authenticates the agent by its token in Proxy-Authorization:
// Basic with the token as the password, or Bearer.
func (b *Broker) proxyAgent(w http.ResponseWriter, r *http.Request, peer netip.AddrPort) (*policy.Agent, bool) {
	token := proxyToken(r.Header.Get("Proxy-Authorization"))
	challenge := func(msg string) {
		w.Header().Set("Proxy-Authenticate", `Basic realm="agent-vault"`)
		w.Header().Add("Proxy-Authenticate", `Bearer realm="agent-vault"`)
		writeAgentError(w, http.StatusProxyAuthRequired, CodeProxyAuthRequired, msg,
			"Set HTTPS_PROXY=http://agent:<token>@HOST:PORT, or send Proxy-Authorization: Bearer <token>.")
	}
	if token == "" {
		challenge("this proxy needs an agent token")
		return nil, false
	}
	snap := b.snap.Load()
	agent, ok := snap.AgentByTokenHash(sha256.Sum256([]byte(token)))
	if !ok {
		b.log.Info("proxy authentication failed", "peer", peer.String())
		b.auditDeny(r.Context(), &reqLog{method: r.Method, host: hostOnly(r.Host), reason: "proxy_auth_failed", status: http.StatusProxyAuthRequired})
		challenge("the agent token is not valid")
		return nil, false
	}
	if !agent.Active(b.now()) {
		b.proxyDeny(w, r, agent, http.StatusForbidden, CodeAgentRevoked, "agent_revoked",
			"agent "+agent.Name+" is revoked or expired", "Ask a human to issue a new agent token.")
		return nil, false
	}
	return agent, true
}

func proxyToken(h string) string {
	scheme, cred, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok {
		return ""
	}
	cred = strings.TrimSpace(cred)
	switch strings.ToLower(scheme) {
	case "bearer":
		return cred
	case "basic":
		raw, err := base64.StdEncoding.DecodeString(cred)
		if err != nil {
			return ""
		}
		user, pass, _ := strings.Cut(string(raw), ":")
		if pass == "" {
			return user
		}
		return pass
	}
	return ""
}

func (b *Broker) proxyDeny(w http.ResponseWriter, r *http.Request, agent *policy.Agent, status int, code, reason, msg, hint string) {
	rl := &reqLog{start: b.now(), mode: "proxy", agent: agent.Name, vault: agent.Vault, method: r.Method,
		host: hostOnly(r.URL.Host), decision: audit.DecisionDeny, reason: reason, code: code, status: status}
	if r.Method != http.MethodConnect {
		rl.path = r.URL.Path
	}
	b.auditDeny(r.Context(), rl)
	b.finishLog(rl)
	writeAgentError(w, status, code, msg, hint)
}

// splitTarget parses "host[:port]" into a normalized name and a port.
func splitTarget(hp string, defPort int) (string, int, bool) {
	host, portStr, err := net.SplitHostPort(hp)
	port := defPort
	if err != nil {
		if defPort == 0 || strings.Contains(hp, ":") {
			return "", 0, false
		}
		host = hp
	} else {
		p, err := strconv.Atoi(portStr)
		if err != nil || p < 1 || p > 65535 {
			return "", 0, false
		}
		port = p
	}
	host = policy.NormalizeHost(host)
	if host == "" {
		return "", 0, false
	}
	return host, port, true
}

// handleConnect answers 200 and terminates the tunnel's TLS; the CONNECT
// host plays the SNI's role and the ClientHello must name it.
func (b *Broker) handleConnect(w http.ResponseWriter, r *http.Request, tc *trackedConn, agent *policy.Agent, peer netip.AddrPort) {
	host, port, ok := splitTarget(r.Host, 0)
	if !ok {
		b.proxyDeny(w, r, agent, http.StatusBadRequest, CodeBadRequest, "bad_target",
			"CONNECT needs host:port", "")
		return
	}
	if _, err := netip.ParseAddr(host); err == nil {
		b.proxyDeny(w, r, agent, http.StatusForbidden, CodeNoService, "ip_literal",
			"CONNECT by address is not allowed: connect by host name", proposalHint(host))
		return
	}
	if !validSNI(host) {
		b.proxyDeny(w, r, agent, http.StatusBadRequest, CodeBadRequest, "bad_target",
			"the CONNECT host is not a valid host name", "")
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		b.log.Error("connect: hijack failed", "err", err)
		writeAgentError(w, http.StatusInternalServerError, CodeBadRequest, "the tunnel could not be opened", "")
		return
	}
	if conn != net.Conn(tc) {
		conn.Close()
		return
	}
	if n := brw.Reader.Buffered(); n > 0 {
		buf, _ := brw.Reader.Peek(n)
		tc.prefix = append([]byte(nil), buf...)
	}
	if !b.enter() {
		tc.Close()
		return
	}
	if _, err := tc.Conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		b.wg.Done()
		tc.Close()
		return
	}
	st := &connState{kind: kindTunnel, agent: agent.Name, peer: peer, connect: host, port: port}
	b.setState(tc, st)
	// The tunnel gets a goroutine of its own and this handler returns, so
	// net/http lets go of the hijacked connection's state (its 4 KiB read
	// and write buffers, the request) and of this deep stack for as long
	// as the tunnel lives: for thousands of idle agent connections, that
	// is most of what each costs.
	go func() {
		defer b.wg.Done()
		b.terminate(tc, st)
	}()
}
