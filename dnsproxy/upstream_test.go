package dnsproxy

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/agentvault/agent-vault/audit"
)

func TestUpstreamFailureIsServfail(t *testing.T) {
	// a port nobody listens on: the kernel refuses at once
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := pc.LocalAddr().String()
	pc.Close()
	// a resolver that reads and never answers: the timeout fires
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// a resolver answering REFUSED
	up := newFakeUpstream(t)
	up.setRcode("api.example.com", dns.TypeA, dns.RcodeRefused)

	for _, c := range []struct{ what, addr string }{{"closed", closed}, {"silent", silent.LocalAddr().String()}, {"refusing", up.addr}} {
		p := startProxy(t, Config{Upstream: c.addr, UpstreamTimeout: 200 * time.Millisecond})
		r := query(t, p.udp, "udp", "api.example.com.", dns.TypeA)
		wantRcode(t, r, dns.RcodeServerFailure)
		if got := p.Stats().ServFail; got != 1 {
			t.Errorf("%s: ServFail counter %d, want 1", c.what, got)
		}
	}
}

func TestUpstreamNXDOMAINPassesWithOwnSOA(t *testing.T) {
	up := newFakeUpstream(t)
	up.setRcode("gone.wild.example.com", dns.TypeA, dns.RcodeNameError)
	p := startProxy(t, Config{Upstream: up.addr})
	r := query(t, p.udp, "udp", "gone.wild.example.com.", dns.TypeA)
	wantRcode(t, r, dns.RcodeNameError)
	wantSOA(t, r)
}

func TestRebindingDropped(t *testing.T) {
	up := newFakeUpstream(t)
	up.answer("rebind.wild.example.com", dns.TypeA,
		"rebind.wild.example.com. 60 IN A 127.0.0.1",
		"rebind.wild.example.com. 60 IN A 10.1.2.3",
		"rebind.wild.example.com. 60 IN A 169.254.169.254")
	up.answer("mixed.wild.example.com", dns.TypeA,
		"mixed.wild.example.com. 60 IN A 192.168.1.1",
		"mixed.wild.example.com. 60 IN A 93.184.215.5")
	up.answer("mapped.wild.example.com", dns.TypeAAAA,
		"mapped.wild.example.com. 60 IN AAAA ::ffff:127.0.0.1",
		"mapped.wild.example.com. 60 IN AAAA fe80::1")
	p := startProxy(t, Config{Upstream: up.addr, IPv6: true})

	r := query(t, p.udp, "udp", "rebind.wild.example.com.", dns.TypeA)
	wantRcode(t, r, dns.RcodeServerFailure)
	r = query(t, p.udp, "udp", "mapped.wild.example.com.", dns.TypeAAAA)
	wantRcode(t, r, dns.RcodeServerFailure)
	for _, a := range []string{"127.0.0.1", "10.1.2.3", "169.254.169.254"} {
		if p.Pinned("alice", "rebind.wild.example.com", ip(a)) {
			t.Errorf("private %s pinned", a)
		}
	}
	r = query(t, p.udp, "udp", "mixed.wild.example.com.", dns.TypeA)
	wantRcode(t, r, dns.RcodeSuccess)
	if got := addrsOf(r); len(got) != 1 || got[0] != ip("93.184.215.5") {
		t.Fatalf("mixed answer %v, want only the public address", got)
	}
	if p.Pinned("alice", "mixed.wild.example.com", ip("192.168.1.1")) {
		t.Error("dropped private address pinned")
	}
	if got := p.Stats().Rebinding; got != 3 {
		t.Errorf("rebinding counter %d, want 3", got)
	}
	p.stop(t)
	if evs := p.sink.find("rebind.wild.example.com", ReasonRebindingBlocked); len(evs) != 1 || evs[0].Decision != audit.DecisionDeny {
		t.Errorf("rebinding events %+v", evs)
	}

	// Allowed explicitly: private answers pass.
	pa := startProxy(t, Config{Upstream: up.addr, AllowPrivate: true})
	r = query(t, pa.udp, "udp", "rebind.wild.example.com.", dns.TypeA)
	wantRcode(t, r, dns.RcodeSuccess)
	if !pa.Pinned("alice", "rebind.wild.example.com", ip("10.1.2.3")) {
		t.Error("private answer not pinned with AllowPrivate")
	}
	// ...but never the metadata address, which the broker would not dial
	if pa.Pinned("alice", "rebind.wild.example.com", ip("169.254.169.254")) {
		t.Error("link-local answer pinned with AllowPrivate")
	}
}

// The DNS proxy hands agents only addresses the broker would dial
// (policy.UpstreamAddrAllowed): NAT64 of a public address passes (IPv6-only
// networks behind DNS64), NAT64 of a private one, Teredo and documentation
// addresses do not.
func TestAnswersJudgedAsTheBrokerDials(t *testing.T) {
	up := newFakeUpstream(t)
	up.answer("v6only.wild.example.com", dns.TypeAAAA,
		"v6only.wild.example.com. 60 IN AAAA 64:ff9b::808:808",
		"v6only.wild.example.com. 60 IN AAAA 64:ff9b::a00:1",
		"v6only.wild.example.com. 60 IN AAAA 2001:0:4136:e378::1",
		"v6only.wild.example.com. 60 IN AAAA 2001:db8::1")
	p := startProxy(t, Config{Upstream: up.addr, IPv6: true})
	r := query(t, p.udp, "udp", "v6only.wild.example.com.", dns.TypeAAAA)
	wantRcode(t, r, dns.RcodeSuccess)
	if got := addrsOf(r); len(got) != 1 || got[0] != ip("64:ff9b::808:808") {
		t.Fatalf("answer %v, want only the NAT64 address of a public one", got)
	}
}

func TestCNAMEChainFlattenedAndPinnedForQuestionName(t *testing.T) {
	up := newFakeUpstream(t)
	up.answer("cdn.wild.example.com", dns.TypeA,
		"cdn.wild.example.com. 300 IN CNAME edge.cdn-provider.net.",
		"edge.cdn-provider.net. 300 IN CNAME e1.cdn-provider.net.",
		"e1.cdn-provider.net. 20 IN A 93.184.217.20",
		"unrelated.net. 300 IN A 93.184.217.99")
	p := startProxy(t, Config{Upstream: up.addr})
	r := query(t, p.udp, "udp", "cdn.wild.example.com.", dns.TypeA)
	wantRcode(t, r, dns.RcodeSuccess)
	if len(r.Answer) != 1 || r.Answer[0].Header().Name != "cdn.wild.example.com." || r.Answer[0].Header().Ttl != 20 {
		t.Fatalf("answer %v, want one A record for the question name with the chain's smallest TTL", r.Answer)
	}
	if !p.Pinned("alice", "cdn.wild.example.com", ip("93.184.217.20")) {
		t.Error("chain's address not pinned for the question name")
	}
	if p.Pinned("alice", "e1.cdn-provider.net", ip("93.184.217.20")) || p.Pinned("alice", "cdn.wild.example.com", ip("93.184.217.99")) {
		t.Error("pinned for the wrong name or an unrelated record")
	}
}

func TestUpstreamTruncationFallsBackToTCP(t *testing.T) {
	up := newFakeUpstream(t)
	var rrs []string
	for i := range 40 {
		rrs = append(rrs, "big.wild.example.com. 300 IN A 93.184.217."+strconv.Itoa(i+1))
	}
	up.answer("big.wild.example.com", dns.TypeA, rrs...)
	up.truncateUDP("big.wild.example.com", dns.TypeA)
	p := startProxy(t, Config{Upstream: up.addr})

	r := query(t, p.udp, "udp", "big.wild.example.com.", dns.TypeA, withEDNS(4096))
	wantRcode(t, r, dns.RcodeSuccess)
	if r.Truncated || len(r.Answer) != maxAddrs {
		t.Fatalf("truncated %v with %d answers, want %d in one EDNS reply", r.Truncated, len(r.Answer), maxAddrs)
	}
	if opt := r.IsEdns0(); opt == nil || opt.UDPSize() != ednsSize {
		t.Errorf("reply OPT %v, want one advertising %d", opt, ednsSize)
	}
	qs := up.queries()
	if len(qs) != 2 || qs[0].Net != "udp" || qs[1].Net != "tcp" {
		t.Fatalf("upstream saw %v, want udp then tcp", qs)
	}
	// a client without EDNS gets TC and retries over TCP, as clients do
	r = query(t, p.udp, "udp", "big.wild.example.com.", dns.TypeA)
	if !r.Truncated {
		t.Fatalf("%d-byte answer sent in a 512-byte UDP reply without TC", r.Len())
	}
	r = query(t, p.tcp, "tcp", "big.wild.example.com.", dns.TypeA)
	if r.Truncated || len(r.Answer) != maxAddrs {
		t.Fatalf("over TCP: truncated %v, %d answers", r.Truncated, len(r.Answer))
	}
	if last := up.queries()[len(up.queries())-1]; last.Net != "tcp" {
		t.Errorf("a TCP client's query went upstream over %s", last.Net)
	}
}
