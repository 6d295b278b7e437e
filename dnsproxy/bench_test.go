package dnsproxy

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func BenchmarkDecide(b *testing.B) {
	snap := testSnapshot()
	alice, _ := snap.Agent("alice")
	qs := []dns.Question{
		{Name: "api.example.com.", Qtype: dns.TypeA, Qclass: dns.ClassINET},
		{Name: "deep.sub.wild.example.com.", Qtype: dns.TypeA, Qclass: dns.ClassINET},
		{Name: "tracker.evil.com.", Qtype: dns.TypeA, Qclass: dns.ClassINET},
		{Name: "api.example.com.", Qtype: dns.TypeHTTPS, Qclass: dns.ClassINET},
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		Decide(snap, alice, qs[i%len(qs)], false)
	}
}

// benchExchange runs b.N sequential UDP queries against addr on one socket.
func benchExchange(b *testing.B, addr, name string) {
	conn, err := net.Dial("udp", addr)
	if err != nil {
		b.Fatal(err)
	}
	co := &dns.Conn{Conn: conn}
	defer co.Close()
	c := &dns.Client{Timeout: 5 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	b.ReportAllocs()
	for b.Loop() {
		m.Id = dns.Id()
		r, _, err := c.ExchangeWithConn(m, co)
		if err != nil {
			b.Fatal(err)
		}
		if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
			b.Fatalf("rcode %s", dns.RcodeToString[r.Rcode])
		}
	}
}

// BenchmarkRoundTrip compares one allowed query through the proxy (forward,
// audit, pin) with the same query sent to the fake upstream directly, and a
// denied query answered by the proxy alone. Compare the ns/op figures of one
// run: absolute numbers vary with the machine's load.
func BenchmarkRoundTrip(b *testing.B) {
	up := newFakeUpstream(b)
	up.answer("api.example.com", dns.TypeA, "api.example.com. 300 IN A 93.184.215.10")
	p := startProxy(b, Config{Upstream: up.addr, RatePerSecond: -1})
	b.Run("direct", func(b *testing.B) { benchExchange(b, up.addr, "api.example.com.") })
	b.Run("proxy_allowed", func(b *testing.B) { benchExchange(b, p.udp, "api.example.com.") })
	b.Run("proxy_denied", func(b *testing.B) { benchExchange(b, p.udp, "evil.com.") })
}
