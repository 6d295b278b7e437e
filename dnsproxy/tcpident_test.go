package dnsproxy

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// With IdentifyConn, a TCP connection is identified once, at accept, and
// every query on it is answered for that agent; a connection it does not
// recognise is refused; UDP still goes through Identify.
func TestIdentifyConnOncePerTCPConnection(t *testing.T) {
	up := newFakeUpstream(t)
	up.answer("other.example.net", dns.TypeA, "other.example.net. 300 IN A 93.184.215.20")
	var calls atomic.Int32
	p := startProxy(t, Config{Upstream: up.addr, IdentifyConn: func(c net.Conn) (string, bool) {
		calls.Add(1)
		if addrPortOf(c.RemoteAddr()).Addr() == ip("127.0.0.5") {
			return "bob", true // as a BPF record would say
		}
		return "", false
	}})

	// bob (vault v2; the source 127.0.0.5 belongs to no agent) over one
	// connection: two queries
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.5")}}
	c, err := d.Dial("tcp", p.tcp)
	if err != nil {
		t.Fatal(err)
	}
	conn := &dns.Conn{Conn: c}
	defer conn.Close()
	for i := range 2 {
		m := new(dns.Msg)
		m.SetQuestion("other.example.net.", dns.TypeA)
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if err := conn.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
		r, err := conn.ReadMsg()
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		wantRcode(t, r, dns.RcodeSuccess)
	}
	if !p.Pinned("bob", "other.example.net", ip("93.184.215.20")) {
		t.Error("the answer was not pinned for the connection's agent")
	}
	if p.Pinned("alice", "other.example.net", ip("93.184.215.20")) {
		t.Error("pinned for the source address's agent instead of the connection's")
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("IdentifyConn called %d times for one connection, want 1", n)
	}

	// a connection nobody recognises is refused, though its source
	// address (127.0.0.1) is alice's
	wantRcode(t, query(t, p.tcp, "tcp", "api.example.com.", dns.TypeA), dns.RcodeRefused)
	// UDP is unaffected: alice by source address
	up.answer("api.example.com", dns.TypeA, "api.example.com. 300 IN A 93.184.215.10")
	wantRcode(t, query(t, p.udp, "udp", "api.example.com.", dns.TypeA), dns.RcodeSuccess)

	conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.connMu.Lock()
		n := len(p.connIDs)
		p.connMu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d tcp identities left after every connection closed", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
