package dnsproxy

import (
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/agentvault/agent-vault/policy"
)

func TestDecide(t *testing.T) {
	snap := testSnapshot()
	alice, _ := snap.Agent("alice")
	mallory, _ := snap.Agent("mallory")
	in := uint16(dns.ClassINET)
	cases := []struct {
		name   string
		agent  *policy.Agent
		q      dns.Question
		ipv6   bool
		action Action
		reason Reason
	}{
		{"exact host", alice, dns.Question{Name: "api.example.com.", Qtype: dns.TypeA, Qclass: in}, false, Forward, ReasonAllowed},
		{"upper case, no trailing dot", alice, dns.Question{Name: "API.EXAMPLE.COM", Qtype: dns.TypeA, Qclass: in}, false, Forward, ReasonAllowed},
		{"below a wildcard", alice, dns.Question{Name: "a.b.wild.example.com.", Qtype: dns.TypeA, Qclass: in}, false, Forward, ReasonAllowed},
		{"wildcard apex", alice, dns.Question{Name: "wild.example.com.", Qtype: dns.TypeA, Qclass: in}, false, Deny, ReasonNoService},
		{"suffix trick", alice, dns.Question{Name: "evilwild.example.com.", Qtype: dns.TypeA, Qclass: in}, false, Deny, ReasonNoService},
		{"other vault's host", alice, dns.Question{Name: "other.example.net.", Qtype: dns.TypeA, Qclass: in}, false, Deny, ReasonNoService},
		{"unknown name, TXT", alice, dns.Question{Name: "x.tunnel.evil.", Qtype: dns.TypeTXT, Qclass: in}, false, Deny, ReasonNoService},
		{"AAAA, v6 off", alice, dns.Question{Name: "api.example.com.", Qtype: dns.TypeAAAA, Qclass: in}, false, NoData, ReasonIPv6Disabled},
		{"AAAA, v6 on", alice, dns.Question{Name: "api.example.com.", Qtype: dns.TypeAAAA, Qclass: in}, true, Forward, ReasonAllowed},
		{"HTTPS", alice, dns.Question{Name: "api.example.com.", Qtype: dns.TypeHTTPS, Qclass: in}, true, NoData, ReasonHTTPSBlocked},
		{"SVCB", alice, dns.Question{Name: "_dns.api.example.com.", Qtype: dns.TypeSVCB, Qclass: in}, true, Deny, ReasonInvalidName},
		{"SVCB allowed name", alice, dns.Question{Name: "x.wild.example.com.", Qtype: dns.TypeSVCB, Qclass: in}, true, NoData, ReasonHTTPSBlocked},
		{"ANY", alice, dns.Question{Name: "api.example.com.", Qtype: dns.TypeANY, Qclass: in}, true, NoData, ReasonTypeNotServed},
		{"denied name, HTTPS", alice, dns.Question{Name: "evil.com.", Qtype: dns.TypeHTTPS, Qclass: in}, true, Deny, ReasonNoService},
		{"reserved A", alice, dns.Question{Name: "Agent-Vault.Internal.", Qtype: dns.TypeA, Qclass: in}, false, Reserved, ReasonReserved},
		{"reserved AAAA, v6 off", alice, dns.Question{Name: "agent-vault.internal.", Qtype: dns.TypeAAAA, Qclass: in}, false, NoData, ReasonIPv6Disabled},
		{"reserved AAAA, v6 on", alice, dns.Question{Name: "agent-vault.internal.", Qtype: dns.TypeAAAA, Qclass: in}, true, Reserved, ReasonReserved},
		{"reserved TXT", alice, dns.Question{Name: "agent-vault.internal.", Qtype: dns.TypeTXT, Qclass: in}, true, NoData, ReasonTypeNotServed},
		{"below reserved", alice, dns.Question{Name: "x.agent-vault.internal.", Qtype: dns.TypeA, Qclass: in}, true, Deny, ReasonNoService},
		{"chaos class", alice, dns.Question{Name: "version.bind.", Qtype: dns.TypeTXT, Qclass: dns.ClassCHAOS}, false, Refuse, ReasonClass},
		{"escaped dot in label", alice, dns.Question{Name: `a\.b.wild.example.com.`, Qtype: dns.TypeA, Qclass: in}, false, Deny, ReasonInvalidName},
		{"escaped byte", alice, dns.Question{Name: `a\000.wild.example.com.`, Qtype: dns.TypeA, Qclass: in}, false, Deny, ReasonInvalidName},
		{"root", alice, dns.Question{Name: ".", Qtype: dns.TypeNS, Qclass: in}, false, Deny, ReasonInvalidName},
		{"empty label", alice, dns.Question{Name: "a..wild.example.com.", Qtype: dns.TypeA, Qclass: in}, false, Deny, ReasonInvalidName},
		{"long label", alice, dns.Question{Name: strings.Repeat("a", 64) + ".wild.example.com.", Qtype: dns.TypeA, Qclass: in}, false, Deny, ReasonInvalidName},
		{"63-byte label", alice, dns.Question{Name: strings.Repeat("a", 63) + ".wild.example.com.", Qtype: dns.TypeA, Qclass: in}, false, Forward, ReasonAllowed},
		{"no agent", nil, dns.Question{Name: "api.example.com.", Qtype: dns.TypeA, Qclass: in}, false, Refuse, ReasonUnknownAgent},
		{"revoked agent", mallory, dns.Question{Name: "api.example.com.", Qtype: dns.TypeA, Qclass: in}, false, Refuse, ReasonAgentInactive},
		{"agent of a vault gone", &policy.Agent{Name: "x", Vault: "gone"}, dns.Question{Name: "api.example.com.", Qtype: dns.TypeA, Qclass: in}, false, Deny, ReasonUnknownVault},
	}
	for _, c := range cases {
		d := Decide(snap, c.agent, c.q, c.ipv6)
		if d.Action != c.action || d.Reason != c.reason {
			t.Errorf("%s: %s/%s, want %s/%s", c.name, d.Action, d.Reason, c.action, c.reason)
		}
		if d.Action == Forward && d.Name != policy.NormalizeHost(c.q.Name) {
			t.Errorf("%s: name %q, want the normalized question name", c.name, d.Name)
		}
	}
	if d := Decide(nil, alice, dns.Question{Name: "api.example.com.", Qtype: dns.TypeA, Qclass: in}, false); d.Action != Refuse || d.Reason != ReasonNoPolicy {
		t.Errorf("no snapshot: %+v", d)
	}
}

func TestLeaseFor(t *testing.T) {
	for ttl, want := range map[uint32]time.Duration{
		0:          time.Minute,
		1:          61 * time.Second,
		300:        6 * time.Minute,
		3540:       time.Hour,
		3541:       time.Hour,
		86400:      time.Hour,
		^uint32(0): time.Hour,
	} {
		if got := leaseFor(ttl); got != want {
			t.Errorf("leaseFor(%d) = %v, want %v", ttl, got, want)
		}
	}
}

func TestPinTableEvictsHeldWhenAllHeld(t *testing.T) {
	clock := newFakeClock()
	tab := newPinTable(2, clock.Now)
	tab.put("a", "x.test", ip("198.51.100.1"), time.Minute)
	tab.put("a", "x.test", ip("198.51.100.2"), time.Minute)
	r1, ok1 := tab.acquire("a", "x.test", ip("198.51.100.1"))
	_, ok2 := tab.acquire("a", "x.test", ip("198.51.100.2"))
	if !ok1 || !ok2 {
		t.Fatal("acquire of live pins failed")
	}
	tab.put("a", "x.test", ip("198.51.100.3"), time.Minute) // all held: the LRU one (…1) goes
	if tab.pinned("a", "x.test", ip("198.51.100.1")) || tab.evictions.Load() != 1 || tab.size() != 2 {
		t.Fatalf("bound not kept when every pin is held: size %d, evictions %d", tab.size(), tab.evictions.Load())
	}
	r1() // releasing an evicted pin is harmless
	// another agent's pins are separate
	tab.put("b", "x.test", ip("198.51.100.1"), time.Minute)
	if !tab.pinned("b", "x.test", ip("198.51.100.1")) || tab.pinned("a", "x.test", ip("198.51.100.1")) {
		t.Fatal("pins leak between agents")
	}
	// expired pins are swept, not counted as evictions
	clock.Advance(2 * time.Minute)
	tab.put("b", "y.test", ip("198.51.100.4"), time.Minute)
	tab.put("b", "z.test", ip("198.51.100.5"), time.Minute)
	if tab.evictions.Load() != 1 {
		t.Fatalf("expired pins counted as evictions: %d", tab.evictions.Load())
	}
	// a re-answer extends, never shortens, a lease
	tab.put("b", "y.test", ip("198.51.100.4"), time.Hour)
	tab.put("b", "y.test", ip("198.51.100.4"), time.Minute)
	clock.Advance(30 * time.Minute)
	if !tab.pinned("b", "y.test", ip("198.51.100.4")) {
		t.Fatal("a shorter re-answer shortened the lease")
	}
	// mapped addresses are the same pin
	if !tab.pinned("b", "y.test", ip("::ffff:198.51.100.4")) {
		t.Fatal("IPv4-mapped address not matched")
	}
}

func TestOncePerWindowBounded(t *testing.T) {
	clock := newFakeClock()
	o := newOncePerWindow(10*time.Second, 3)
	for _, k := range []string{"a", "b", "c"} {
		if !o.first(k, clock.Now()) {
			t.Fatalf("first event of %s suppressed", k)
		}
	}
	if o.first("a", clock.Now()) {
		t.Fatal("second event in the window not suppressed")
	}
	if !o.first("d", clock.Now()) || o.first("e", clock.Now()) {
		t.Fatal("overflow keys: want one event per window for all of them")
	}
	if len(o.seen) > 4 {
		t.Fatalf("%d keys remembered, want at most max+1", len(o.seen))
	}
	clock.Advance(10 * time.Second)
	if !o.first("a", clock.Now()) || !o.first("e", clock.Now()) {
		t.Fatal("next window's events suppressed")
	}
}

func TestLimiterRefillsAndCaps(t *testing.T) {
	clock := newFakeClock()
	l := newLimiter(2, 4)
	n := 0
	for range 10 {
		if l.allow("a", clock.Now()) {
			n++
		}
	}
	if n != 4 {
		t.Fatalf("%d allowed from a full bucket, want the burst 4", n)
	}
	clock.Advance(time.Second)
	if !l.allow("a", clock.Now()) || !l.allow("a", clock.Now()) || l.allow("a", clock.Now()) {
		t.Fatal("one second at 2/s must give exactly 2 tokens")
	}
	clock.Advance(time.Hour)
	n = 0
	for range 10 {
		if l.allow("a", clock.Now()) {
			n++
		}
	}
	if n != 4 {
		t.Fatalf("bucket grew past its burst: %d", n)
	}
	if !newLimiter(-1, 0).allow("a", clock.Now()) {
		t.Fatal("a negative rate must disable limiting")
	}
}
