package dnsproxy

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/agentvault/agent-vault/policy"
)

// FuzzDecide feeds arbitrary wire messages through Unpack, Decide and the
// proxy's whole answer path (with the upstream replaced by a recorder), and
// checks the invariants: only allowed names of type A/AAAA are ever sent
// upstream, HTTPS/SVCB and AAAA-without-IPv6 never are, denied names get
// NXDOMAIN, and every reply is a well-formed answer to the question asked.
func FuzzDecide(f *testing.F) {
	seed := func(name string, qtype, class uint16, edns bool) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Question[0].Qclass = class
		if edns {
			m.SetEdns0(4096, true)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	in := uint16(dns.ClassINET)
	for _, s := range []struct {
		b    []byte
		ipv6 bool
	}{
		{seed("api.example.com.", dns.TypeA, in, false), false},
		{seed("API.example.COM.", dns.TypeAAAA, in, true), false},
		{seed("api.example.com.", dns.TypeAAAA, in, true), true},
		{seed("x.wild.example.com.", dns.TypeHTTPS, in, false), true},
		{seed("x.wild.example.com.", dns.TypeSVCB, in, false), true},
		{seed("wild.example.com.", dns.TypeA, in, false), false},
		{seed("data.evil.com.", dns.TypeTXT, in, false), false},
		{seed("agent-vault.internal.", dns.TypeA, in, false), false},
		{seed("version.bind.", dns.TypeTXT, dns.ClassCHAOS, false), false},
		{seed(`a\.b.wild.example.com.`, dns.TypeA, in, false), false},
		{seed(".", dns.TypeNS, in, false), false},
		{[]byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0}, false},
	} {
		f.Add(s.b, s.ipv6)
	}

	snap := testSnapshot()
	alice, _ := snap.Agent("alice")
	src := netip.MustParseAddrPort("127.0.0.1:5353")

	f.Fuzz(func(t *testing.T, wire []byte, ipv6 bool) {
		m := new(dns.Msg)
		if err := m.Unpack(wire); err != nil {
			return
		}
		for _, q := range m.Question {
			d := Decide(snap, alice, q, ipv6)
			checkDecision(t, snap, alice, q, ipv6, d)
		}

		var sent []string
		p, err := New(Config{Upstream: "127.0.0.1:53", IPv6: ipv6, RatePerSecond: -1,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			BrokerAddrs: func(netip.AddrPort) []netip.Addr {
				return []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}
			}})
		if err != nil {
			t.Fatal(err)
		}
		p.SetPolicy(snap)
		p.exchange = func(_ context.Context, name string, qtype uint16, _ bool) (*dns.Msg, error) {
			sent = append(sent, name)
			r := new(dns.Msg)
			r.SetQuestion(dns.Fqdn(name), qtype)
			rr := addrRR(dns.Fqdn(name), netip.MustParseAddr("93.184.215.1"), 300)
			if qtype == dns.TypeAAAA {
				rr = addrRR(dns.Fqdn(name), netip.MustParseAddr("2606:4700::2"), 300)
			}
			r.Answer = []dns.RR{rr}
			return r, nil
		}
		resp := p.answer(context.Background(), m, src, netip.Addr{}, false)
		checkReply(t, snap, alice, m, resp, sent, ipv6)
	})
}

func checkDecision(t *testing.T, snap *policy.Snapshot, agent *policy.Agent, q dns.Question, ipv6 bool, d Decision) {
	t.Helper()
	name := policy.NormalizeHost(q.Name)
	allowed := plainHostName(name) && snap.HostAllowed(agent.Vault, name)
	switch d.Action {
	case Forward:
		if !allowed || q.Qclass != dns.ClassINET || d.Name != name {
			t.Fatalf("forwarded %q (class %d): not an allowed name", q.Name, q.Qclass)
		}
		if q.Qtype != dns.TypeA && (q.Qtype != dns.TypeAAAA || !ipv6) {
			t.Fatalf("forwarded type %d for %q (ipv6 %v)", q.Qtype, q.Name, ipv6)
		}
	case Reserved:
		if name != policy.ReservedHost || q.Qtype != dns.TypeA && q.Qtype != dns.TypeAAAA {
			t.Fatalf("reserved answer for %q type %d", q.Name, q.Qtype)
		}
	case NoData:
		if !allowed && name != policy.ReservedHost {
			t.Fatalf("no-data (not NXDOMAIN) for a denied name %q", q.Name)
		}
	}
	if !allowed && name != policy.ReservedHost && q.Qclass == dns.ClassINET && d.Action != Deny {
		t.Fatalf("denied name %q got %s, want deny", q.Name, d.Action)
	}
}

func checkReply(t *testing.T, snap *policy.Snapshot, agent *policy.Agent, req, resp *dns.Msg, sent []string, ipv6 bool) {
	t.Helper()
	if resp == nil {
		t.Fatal("no reply")
	}
	if resp.Id != req.Id || !resp.Response {
		t.Fatalf("reply id %d response %v for query id %d", resp.Id, resp.Response, req.Id)
	}
	if _, err := resp.Pack(); err != nil {
		t.Fatalf("reply does not pack: %v", err)
	}
	if len(req.Question) != 1 {
		if len(sent) != 0 || resp.Rcode != dns.RcodeFormatError {
			t.Fatalf("%d questions: sent %v, rcode %d", len(req.Question), sent, resp.Rcode)
		}
		return
	}
	q := req.Question[0]
	d := Decide(snap, agent, q, ipv6)
	opt := req.IsEdns0()
	badVersion := opt != nil && opt.Version() != 0
	switch {
	case d.Action == Forward && !badVersion:
		if len(sent) != 1 || sent[0] != d.Name {
			t.Fatalf("allowed %q: sent upstream %v", d.Name, sent)
		}
	case len(sent) != 0:
		t.Fatalf("%s %q (%s) was sent upstream: %v", d.Action, q.Name, d.Reason, sent)
	}
	if d.Action == Deny && !badVersion && resp.Rcode != dns.RcodeNameError {
		t.Fatalf("denied %q answered %s", q.Name, dns.RcodeToString[resp.Rcode])
	}
	for _, rr := range resp.Answer {
		h := rr.Header()
		if h.Name != q.Name || h.Rrtype != dns.TypeA && h.Rrtype != dns.TypeAAAA || h.Rrtype != q.Qtype {
			t.Fatalf("answer record %v for question %v", rr, q)
		}
	}
}
