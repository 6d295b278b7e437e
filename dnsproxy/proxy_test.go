package dnsproxy

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

func TestAllowedNameAnsweredAndPinned(t *testing.T) {
	up := newFakeUpstream(t)
	up.answer("api.example.com", dns.TypeA,
		"api.example.com. 300 IN A 93.184.215.10",
		"api.example.com. 300 IN A 93.184.215.11",
		"api.example.com. 300 IN TXT \"extra stuff is stripped\"")
	p := startProxy(t, Config{Upstream: up.addr})

	for _, netw := range []string{"udp", "tcp"} {
		addr := p.udp
		if netw == "tcp" {
			addr = p.tcp
		}
		r := query(t, addr, netw, "API.Example.COM.", dns.TypeA)
		wantRcode(t, r, dns.RcodeSuccess)
		got := addrsOf(r)
		want := []netip.Addr{ip("93.184.215.10"), ip("93.184.215.11")}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: answer %v, want %v", netw, got, want)
		}
		for _, rr := range r.Answer {
			if rr.Header().Name != "API.Example.COM." || rr.Header().Ttl != 300 {
				t.Errorf("%s: record %v: want owner as asked and TTL 300", netw, rr)
			}
		}
		if r.Question[0].Name != "API.Example.COM." {
			t.Errorf("question not echoed as asked: %v", r.Question[0])
		}
	}
	for _, a := range []string{"93.184.215.10", "93.184.215.11"} {
		if !p.Pinned("alice", "api.example.com", ip(a)) {
			t.Errorf("%s not pinned for alice", a)
		}
		if !p.Pinned("alice", "API.example.com.", ip(a)) {
			t.Errorf("%s not pinned for alice under a differently written name", a)
		}
		if p.Pinned("bob", "api.example.com", ip(a)) {
			t.Errorf("%s pinned for bob, who never asked", a)
		}
		if p.Pinned("alice", "other.example.com", ip(a)) {
			t.Errorf("%s pinned for another name", a)
		}
	}
	if p.Pinned("alice", "api.example.com", ip("93.184.215.12")) {
		t.Error("an address the answer did not hold is pinned")
	}
	qs := up.queries()
	if len(qs) != 2 || qs[0] != (upQuery{"api.example.com.", dns.TypeA, "udp"}) || qs[1].Net != "tcp" {
		t.Errorf("upstream saw %v, want the lower-cased name once over udp and once over tcp", qs)
	}
	p.stop(t)
	evs := p.sink.find("api.example.com", ReasonAllowed)
	if len(evs) != 2 {
		t.Fatalf("%d allow events, want 2: %v", len(evs), p.sink.all())
	}
	ev := evs[0]
	if ev.Action != ActionDNSQuery || ev.Decision != audit.DecisionAllow || ev.Method != "A" ||
		ev.Actor != (audit.Actor{Kind: audit.ActorAgent, Name: "alice"}) || ev.Vault != "v1" || ev.Target != "127.0.0.1" {
		t.Errorf("allow event %+v", ev)
	}
}

func TestPinsWrittenBeforeReply(t *testing.T) {
	up := newFakeUpstream(t)
	up.answer("a.wild.example.com", dns.TypeA, "a.wild.example.com. 60 IN A 93.184.217.7")
	atWrite := make(chan bool, 1)
	p := startProxyWith(t, Config{Upstream: up.addr}, func(p *Proxy) {
		p.beforeWrite = func(resp *dns.Msg) {
			atWrite <- len(resp.Answer) == 1 && p.Pinned("alice", "a.wild.example.com", ip("93.184.217.7"))
		}
	})
	r := query(t, p.udp, "udp", "a.wild.example.com.", dns.TypeA)
	wantRcode(t, r, dns.RcodeSuccess)
	select {
	case pinned := <-atWrite:
		if !pinned {
			t.Fatal("the address was not pinned when the reply was written")
		}
	default:
		t.Fatal("the reply was sent without passing the before-write hook")
	}
}

func TestDeniedNamesNeverForwarded(t *testing.T) {
	up := newFakeUpstream(t)
	p := startProxy(t, Config{Upstream: up.addr})
	cases := []struct {
		name  string
		qtype uint16
	}{
		{"evil.com.", dns.TypeA},
		{"secret-data.evil.com.", dns.TypeTXT},
		{"wild.example.com.", dns.TypeA},  // the wildcard's apex is not below it
		{"other.example.net.", dns.TypeA}, // bob's vault, not alice's
		{"api.example.com.evil.com.", dns.TypeA},
		{"api_x.wild.example.com.", dns.TypeA}, // not a plain host name
		{".", dns.TypeNS},
	}
	for _, c := range cases {
		for _, netw := range []string{"udp", "tcp"} {
			addr := map[string]string{"udp": p.udp, "tcp": p.tcp}[netw]
			r := query(t, addr, netw, c.name, c.qtype)
			wantRcode(t, r, dns.RcodeNameError)
			wantSOA(t, r)
		}
	}
	if qs := up.queries(); len(qs) != 0 {
		t.Fatalf("denied names reached the upstream: %v", qs)
	}
	p.stop(t)
	if evs := p.sink.find("evil.com", ReasonNoService); len(evs) != 2 || evs[0].Decision != audit.DecisionDeny {
		t.Errorf("deny events for evil.com: %+v", evs)
	}
	if evs := p.sink.find("api_x.wild.example.com", ReasonInvalidName); len(evs) != 2 {
		t.Errorf("invalid-name events: %+v", evs)
	}
}

func TestNoDataAnswers(t *testing.T) {
	up := newFakeUpstream(t)
	up.answer("api.example.com", dns.TypeAAAA, "api.example.com. 300 IN AAAA 2606:4700::10")
	p := startProxy(t, Config{Upstream: up.addr})
	cases := []struct {
		qtype  uint16
		reason Reason
	}{
		{dns.TypeAAAA, ReasonIPv6Disabled},
		{dns.TypeHTTPS, ReasonHTTPSBlocked},
		{dns.TypeSVCB, ReasonHTTPSBlocked},
		{dns.TypeMX, ReasonTypeNotServed},
		{dns.TypeTXT, ReasonTypeNotServed},
		{dns.TypeCNAME, ReasonTypeNotServed},
	}
	for _, c := range cases {
		r := query(t, p.udp, "udp", "api.example.com.", c.qtype)
		wantRcode(t, r, dns.RcodeSuccess)
		wantSOA(t, r)
	}
	if qs := up.queries(); len(qs) != 0 {
		t.Fatalf("no-data types reached the upstream: %v", qs)
	}
	p.stop(t)
	for _, c := range cases {
		found := false
		for _, ev := range p.sink.find("api.example.com", c.reason) {
			found = found || ev.Method == dns.TypeToString[c.qtype] && ev.Decision == audit.DecisionDeny
		}
		if !found {
			t.Errorf("no %s audit event for %s", c.reason, dns.TypeToString[c.qtype])
		}
	}

	// With IPv6 on, AAAA is resolved and pinned; HTTPS stays blocked.
	p6 := startProxy(t, Config{Upstream: up.addr, IPv6: true})
	r := query(t, p6.udp, "udp", "api.example.com.", dns.TypeAAAA)
	wantRcode(t, r, dns.RcodeSuccess)
	if got := addrsOf(r); len(got) != 1 || got[0] != ip("2606:4700::10") {
		t.Fatalf("AAAA answer %v", got)
	}
	if !p6.Pinned("alice", "api.example.com", ip("2606:4700::10")) {
		t.Error("AAAA answer not pinned")
	}
	wantSOA(t, query(t, p6.udp, "udp", "api.example.com.", dns.TypeHTTPS))
}

func TestUnknownRevokedAndNoPolicyRefused(t *testing.T) {
	up := newFakeUpstream(t)
	up.answer("api.example.com", dns.TypeA, "api.example.com. 300 IN A 93.184.215.10")
	p := startProxy(t, Config{Upstream: up.addr})
	for range 3 {
		r := query(t, p.udp, "udp", "api.example.com.", dns.TypeA, fromAddr("127.0.0.2"))
		wantRcode(t, r, dns.RcodeRefused)
		r = query(t, p.tcp, "tcp", "api.example.com.", dns.TypeA, fromAddr("127.0.0.4"))
		wantRcode(t, r, dns.RcodeRefused)
	}
	if up.asked("api.example.com") {
		t.Error("a refused query reached the upstream")
	}
	p.stop(t)
	unknown := p.sink.find("api.example.com", ReasonUnknownAgent)
	if len(unknown) != 1 || unknown[0].Target != "127.0.0.2" || unknown[0].Actor.Name != "" {
		t.Errorf("unknown-source events %+v, want exactly one per window naming the source", unknown)
	}
	if revoked := p.sink.find("api.example.com", ReasonAgentInactive); len(revoked) != 1 || revoked[0].Actor.Name != "mallory" {
		t.Errorf("revoked-agent events %+v", revoked)
	}
	if got := p.Stats().Refused; got != 6 {
		t.Errorf("refused counter %d, want 6", got)
	}

	// No snapshot yet: refused.
	q, err := New(Config{Upstream: up.addr})
	if err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetQuestion("api.example.com.", dns.TypeA)
	wantRcode(t, q.answer(t.Context(), m, netip.MustParseAddrPort("127.0.0.1:5353"), netip.Addr{}, false), dns.RcodeRefused)
}

func TestRateLimitPerAgent(t *testing.T) {
	up := newFakeUpstream(t)
	clock := newFakeClock()
	p := startProxy(t, Config{Upstream: up.addr, RatePerSecond: 1, Burst: 3, Now: clock.Now})
	var codes []int
	for range 6 {
		codes = append(codes, query(t, p.udp, "udp", "denied.test.", dns.TypeA).Rcode)
	}
	want := []int{3, 3, 3, 5, 5, 5} // NXDOMAIN while tokens last, then REFUSED
	if !slices.Equal(codes, want) {
		t.Fatalf("rcodes %v, want %v", codes, want)
	}
	// bob has his own bucket
	wantRcode(t, query(t, p.udp, "udp", "denied.test.", dns.TypeA, fromAddr("127.0.0.3")), dns.RcodeNameError)
	clock.Advance(2 * time.Second)
	wantRcode(t, query(t, p.udp, "udp", "denied.test.", dns.TypeA), dns.RcodeNameError)
	p.stop(t)
	if evs := p.sink.find("denied.test", ReasonRateLimited); len(evs) != 1 || evs[0].Actor.Name != "alice" {
		t.Errorf("rate-limit events %+v, want one for the window", evs)
	}
	if got := p.Stats().RateLimited; got != 3 {
		t.Errorf("rate-limited counter %d, want 3", got)
	}
}

func TestReservedNameAnswersBroker(t *testing.T) {
	up := newFakeUpstream(t)
	broker := ip("192.0.2.53")
	asked := make(chan netip.AddrPort, 10)
	p := startProxy(t, Config{Upstream: up.addr, BrokerAddrs: func(src netip.AddrPort) []netip.Addr {
		asked <- src
		return []netip.Addr{broker, ip("2001:db8::53")}
	}})
	r := query(t, p.udp, "udp", "Agent-Vault.Internal.", dns.TypeA)
	wantRcode(t, r, dns.RcodeSuccess)
	if got := addrsOf(r); len(got) != 1 || got[0] != broker {
		t.Fatalf("agent-vault.internal answered %v, want %v", got, broker)
	}
	if src := <-asked; src.Addr() != ip("127.0.0.1") {
		t.Errorf("BrokerAddrs asked for %v, want the client", src)
	}
	if !p.Pinned("alice", "agent-vault.internal", broker) {
		t.Error("broker address not pinned")
	}
	wantSOA(t, query(t, p.udp, "udp", "agent-vault.internal.", dns.TypeAAAA)) // IPv6 off
	wantRcode(t, query(t, p.udp, "udp", "agent-vault.internal.", dns.TypeA, fromAddr("127.0.0.2")), dns.RcodeRefused)
	if up.asked("agent-vault.internal") {
		t.Error("the reserved name reached the upstream")
	}

	// Without BrokerAddrs: the address the query arrived on.
	p2 := startProxy(t, Config{Upstream: up.addr})
	if got := addrsOf(query(t, p2.tcp, "tcp", "agent-vault.internal.", dns.TypeA)); len(got) != 1 || got[0] != ip("127.0.0.1") {
		t.Fatalf("agent-vault.internal answered %v, want the local address", got)
	}
}

func TestLeaseFollowsTTLWithFakeClock(t *testing.T) {
	up := newFakeUpstream(t)
	up.answer("short.wild.example.com", dns.TypeA, "short.wild.example.com. 30 IN A 93.184.217.1")
	up.answer("long.wild.example.com", dns.TypeA, "long.wild.example.com. 86400 IN A 93.184.217.2")
	clock := newFakeClock()
	p := startProxy(t, Config{Upstream: up.addr, Now: clock.Now})
	query(t, p.udp, "udp", "short.wild.example.com.", dns.TypeA)
	r := query(t, p.udp, "udp", "long.wild.example.com.", dns.TypeA)
	if ttl := r.Answer[0].Header().Ttl; ttl != maxAnswerTTL {
		t.Errorf("a day's TTL handed on as %d, want it capped at %d", ttl, maxAnswerTTL)
	}
	short, long := ip("93.184.217.1"), ip("93.184.217.2")

	clock.Advance(89 * time.Second) // lease of short: 30 s + 60 s
	if !p.Pinned("alice", "short.wild.example.com", short) {
		t.Fatal("short pin gone before TTL + 60 s")
	}
	release := p.Hold("alice", "short.wild.example.com", short)
	clock.Advance(10 * time.Minute)
	if !p.Pinned("alice", "short.wild.example.com", short) {
		t.Fatal("held pin expired under a live connection")
	}
	release()
	release() // idempotent
	clock.Advance(59 * time.Second)
	if !p.Pinned("alice", "short.wild.example.com", short) {
		t.Fatal("pin gone right after its last connection closed")
	}
	clock.Advance(2 * time.Second)
	if p.Pinned("alice", "short.wild.example.com", short) {
		t.Fatal("pin alive a minute after its last connection closed")
	}
	if rel, ok := p.Acquire("alice", "short.wild.example.com", short); ok || rel == nil {
		t.Fatal("Acquire succeeded on an expired pin (or returned a nil release)")
	}

	// long: capped at one hour from its answer
	if !p.Pinned("alice", "long.wild.example.com", long) {
		t.Fatal("long pin gone early")
	}
	clock.Advance(time.Hour - 89*time.Second - 10*time.Minute - 61*time.Second + time.Second)
	if p.Pinned("alice", "long.wild.example.com", long) {
		t.Fatal("a day's TTL pinned longer than an hour")
	}
}

func TestPinLRUBoundAndEvictionCounter(t *testing.T) {
	up := newFakeUpstream(t)
	names := []string{"n1", "n2", "n3", "n4", "n5"}
	for i, n := range names {
		up.answer(n+".wild.example.com", dns.TypeA, n+".wild.example.com. 300 IN A 93.184.217."+string(rune('1'+i)))
	}
	p := startProxy(t, Config{Upstream: up.addr, MaxPinsPerAgent: 3})
	for _, n := range names[:3] {
		query(t, p.udp, "udp", n+".wild.example.com.", dns.TypeA)
	}
	// n1 is used (by a check), so n2 is the least recently used; n3 is held.
	if !p.Pinned("alice", "n1.wild.example.com", ip("93.184.217.1")) {
		t.Fatal("n1 not pinned")
	}
	release := p.Hold("alice", "n3.wild.example.com", ip("93.184.217.3"))
	defer release()
	query(t, p.udp, "udp", "n4.wild.example.com.", dns.TypeA)
	if p.Pinned("alice", "n2.wild.example.com", ip("93.184.217.2")) {
		t.Error("least recently used pin n2 survived")
	}
	query(t, p.udp, "udp", "n5.wild.example.com.", dns.TypeA)
	// order now (most recent first): n5, n4, n1, n3(held) → n1 goes, n3 is skipped
	if p.Pinned("alice", "n1.wild.example.com", ip("93.184.217.1")) {
		t.Error("n1 survived although it was the least recently used unheld pin")
	}
	for _, c := range []struct{ n, a string }{{"n3", "93.184.217.3"}, {"n4", "93.184.217.4"}, {"n5", "93.184.217.5"}} {
		if !p.Pinned("alice", c.n+".wild.example.com", ip(c.a)) {
			t.Errorf("%s evicted", c.n)
		}
	}
	if got := p.Stats().PinEvictions; got != 2 {
		t.Errorf("evictions %d, want 2", got)
	}
	if got := p.Stats().Pins; got != 3 {
		t.Errorf("%d pins, want the bound 3", got)
	}
}

func TestEDNSVersionAndOptions(t *testing.T) {
	up := newFakeUpstream(t)
	p := startProxy(t, Config{Upstream: up.addr})
	r := query(t, p.udp, "udp", "denied.test.", dns.TypeA, withEDNS(1400))
	wantRcode(t, r, dns.RcodeNameError)
	if r.IsEdns0() == nil {
		t.Error("OPT of the request not answered with one")
	}
	r = query(t, p.udp, "udp", "denied.test.", dns.TypeA, withEDNS(1400), func(m *dns.Msg, _ *dns.Client) {
		m.IsEdns0().SetVersion(1)
	})
	wantRcode(t, r, dns.RcodeBadVers)
}

func TestAuditFailureWithholdsAnswer(t *testing.T) {
	up := newFakeUpstream(t)
	up.answer("api.example.com", dns.TypeA, "api.example.com. 300 IN A 93.184.215.10")
	sink := &memSink{fail: errors.New("disk full")}
	p := startProxy(t, Config{Upstream: up.addr, Audit: sink})
	r := query(t, p.udp, "udp", "api.example.com.", dns.TypeA)
	wantRcode(t, r, dns.RcodeServerFailure)
	if p.Pinned("alice", "api.example.com", ip("93.184.215.10")) {
		t.Fatal("address pinned although its query could not be audited")
	}
	if p.Stats().AuditFailed == 0 {
		t.Error("audit failure not counted")
	}
}

func TestSetPolicyDropsStalePins(t *testing.T) {
	up := newFakeUpstream(t)
	up.answer("x.wild.example.com", dns.TypeA, "x.wild.example.com. 300 IN A 93.184.217.9")
	up.answer("api.example.com", dns.TypeA, "api.example.com. 300 IN A 93.184.215.10")
	p := startProxy(t, Config{Upstream: up.addr})
	query(t, p.udp, "udp", "x.wild.example.com.", dns.TypeA)
	query(t, p.udp, "udp", "api.example.com.", dns.TypeA)
	in := testInput()
	in.Services = slices.DeleteFunc(in.Services, func(s policy.Service) bool { return s.Name == "wild" })
	p.SetPolicy(policy.NewSnapshot(in))
	if p.Pinned("alice", "x.wild.example.com", ip("93.184.217.9")) {
		t.Error("pin survived the removal of its service")
	}
	if !p.Pinned("alice", "api.example.com", ip("93.184.215.10")) {
		t.Error("pin of a still-allowed name dropped")
	}
	if got := p.Stats().Pins; got != 1 {
		t.Errorf("%d pins left, want 1", got)
	}
}

func TestShutdownBeforeServe(t *testing.T) {
	p, err := New(Config{Upstream: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ServeUDP(pc); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("serve after shutdown: %v", err)
	}
	if _, err := pc.WriteTo([]byte("x"), pc.LocalAddr()); err == nil {
		t.Error("packet conn still open after a refused serve")
	}
}

func TestNewValidatesUpstream(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1":      "127.0.0.1:53",
		"127.0.0.1:5353": "127.0.0.1:5353",
		"::1":            "[::1]:53",
		"[::1]:5300":     "[::1]:5300",
		"resolver.lan":   "resolver.lan:53",
	} {
		p, err := New(Config{Upstream: in})
		if err != nil || p.upstream != want {
			t.Errorf("upstream %q → %q, %v; want %q", in, p.upstream, err, want)
		}
	}
	for _, bad := range []string{"", ":53", "a:b:c"} {
		if _, err := New(Config{Upstream: bad}); err == nil {
			t.Errorf("upstream %q accepted", bad)
		}
	}
}
