package dnsproxy

import (
	"context"
	"net"
	"sync"
)

// TCP identity: in local mode the kernel's record of a captured TCP
// connection (agent cgroup, original resolver) is keyed by the connection's
// 4-tuple and consumed by its first lookup, so it cannot be looked up per
// query by source address as UDP is. With Config.IdentifyConn set, the
// proxy asks once per connection, when it is accepted, and every query on
// the connection is answered for that agent (or refused).

// maxTCPIdentities bounds the connections remembered at once; past it a new
// connection is closed at once (the proxy's own TCP limits are far lower).
const maxTCPIdentities = 1 << 16

type connIdentity struct {
	agent string
	ok    bool
}

type connIdentityKey struct{}

// identityListener asks IdentifyConn for every accepted connection and
// remembers the answer until the connection is closed.
type identityListener struct {
	net.Listener
	p *Proxy
}

type identityConn struct {
	net.Conn
	p    *Proxy
	key  string
	once sync.Once
}

func connKey(remote, local net.Addr) string {
	if remote == nil || local == nil {
		return ""
	}
	return remote.String() + "|" + local.String()
}

func (l *identityListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		name, ok := l.p.cfg.IdentifyConn(c)
		key := connKey(c.RemoteAddr(), c.LocalAddr())
		l.p.connMu.Lock()
		full := len(l.p.connIDs) >= maxTCPIdentities
		if !full {
			l.p.connIDs[key] = connIdentity{agent: name, ok: ok}
		}
		l.p.connMu.Unlock()
		if full {
			l.p.log.Warn("dns: too many tcp connections; closing one", "src", c.RemoteAddr().String())
			c.Close()
			continue
		}
		return &identityConn{Conn: c, p: l.p, key: key}, nil
	}
}

func (c *identityConn) Close() error {
	c.once.Do(func() {
		c.p.connMu.Lock()
		delete(c.p.connIDs, c.key)
		c.p.connMu.Unlock()
	})
	return c.Conn.Close()
}

// withConnIdentity puts the identity of a TCP query's connection in ctx
// (when IdentifyConn is set).
func (p *Proxy) withConnIdentity(ctx context.Context, remote, local net.Addr) context.Context {
	if p.cfg.IdentifyConn == nil {
		return ctx
	}
	p.connMu.Lock()
	id, found := p.connIDs[connKey(remote, local)]
	p.connMu.Unlock()
	if !found {
		id = connIdentity{} // unknown: refused
	}
	return context.WithValue(ctx, connIdentityKey{}, id)
}
