package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// memSink is an audit.Sink in memory; fail, when set, makes Append fail.
type memSink struct {
	mu     sync.Mutex
	events []audit.Event
	fail   error
}

func (s *memSink) Append(_ context.Context, ev *audit.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	ev.Seq = uint64(len(s.events) + 1)
	s.events = append(s.events, *ev)
	return nil
}

func (s *memSink) all() []audit.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]audit.Event(nil), s.events...)
}

// find returns the events for host with the given reason.
func (s *memSink) find(host string, reason Reason) []audit.Event {
	var out []audit.Event
	for _, ev := range s.all() {
		if ev.Host == host && ev.Reason == string(reason) {
			out = append(out, ev)
		}
	}
	return out
}

// upQuery is one query the fake upstream received.
type upQuery struct {
	Name string // lower case, fully qualified
	Type uint16
	Net  string // "udp" or "tcp"
}

// fakeUpstream is an authoritative server on 127.0.0.1 (UDP and TCP on the
// same port) that logs every query it receives.
type fakeUpstream struct {
	addr  string
	mu    sync.Mutex
	log   []upQuery
	ans   map[string][]dns.RR // "name/type" → answer section
	rc    map[string]int      // "name/type" → rcode
	tcUDP map[string]bool     // "name/type" → truncated (no answers) over UDP
}

func key(name string, qtype uint16) string {
	return strings.ToLower(dns.Fqdn(name)) + "/" + dns.TypeToString[qtype]
}

func newFakeUpstream(t testing.TB) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{ans: map[string][]dns.RR{}, rc: map[string]int{}, tcUDP: map[string]bool{}}
	var pc net.PacketConn
	var l net.Listener
	for i := 0; i < 20 && l == nil; i++ {
		var err error
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen udp: %v", err)
		}
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
		}
	}
	if l == nil {
		t.Fatal("no port free for both udp and tcp")
	}
	f.addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: f}, {Listener: l, Handler: f}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return f
}

// answer sets what the upstream answers for (name, type); records in zone
// file syntax.
func (f *fakeUpstream) answer(name string, qtype uint16, rrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var list []dns.RR
	for _, s := range rrs {
		rr, err := dns.NewRR(s)
		if err != nil {
			panic(err)
		}
		list = append(list, rr)
	}
	f.ans[key(name, qtype)] = list
}

// setRcode makes the upstream answer (name, type) with rcode.
func (f *fakeUpstream) setRcode(name string, qtype uint16, rcode int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rc[key(name, qtype)] = rcode
}

// truncateUDP makes the upstream answer (name, type) over UDP with TC and
// no records, so only TCP gets the answer.
func (f *fakeUpstream) truncateUDP(name string, qtype uint16) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tcUDP[key(name, qtype)] = true
}

func (f *fakeUpstream) queries() []upQuery {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]upQuery(nil), f.log...)
}

// asked reports whether any query for name (any type) reached the upstream.
func (f *fakeUpstream) asked(name string) bool {
	for _, q := range f.queries() {
		if q.Name == strings.ToLower(dns.Fqdn(name)) {
			return true
		}
	}
	return false
}

func (f *fakeUpstream) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	q := r.Question[0]
	netw := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		netw = "tcp"
	}
	k := key(q.Name, q.Qtype)
	f.mu.Lock()
	f.log = append(f.log, upQuery{Name: strings.ToLower(q.Name), Type: q.Qtype, Net: netw})
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if rc, ok := f.rc[k]; ok {
		m.Rcode = rc
	} else if f.tcUDP[k] && netw == "udp" {
		m.Truncated = true
	} else {
		m.Answer = append(m.Answer, f.ans[k]...)
	}
	f.mu.Unlock()
	w.WriteMsg(m)
}

// testSnapshot: vault v1 allows api.example.com and *.wild.example.com,
// vault v2 allows other.example.net; alice (127.0.0.1) uses v1, bob
// (127.0.0.3) v2, mallory (127.0.0.4) is revoked.
func testSnapshot() *policy.Snapshot { return policy.NewSnapshot(testInput()) }

func testInput() policy.Input {
	none := policy.Auth{Kind: policy.AuthNone}
	return policy.Input{
		Version: 1,
		Vaults:  []string{"v1", "v2"},
		Services: []policy.Service{
			{Vault: "v1", Name: "api", Host: "api.example.com", Auth: none},
			{Vault: "v1", Name: "wild", Host: "*.wild.example.com", Auth: none},
			{Vault: "v2", Name: "other", Host: "other.example.net", Auth: none},
		},
		Agents: []policy.Agent{
			{Name: "alice", Vault: "v1", Sources: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}},
			{Name: "bob", Vault: "v2", Sources: []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}},
			{Name: "mallory", Vault: "v1", Sources: []netip.Prefix{netip.MustParsePrefix("127.0.0.4/32")}, Revoked: true},
		},
	}
}

// testProxy is a proxy serving UDP and TCP on 127.0.0.1.
type testProxy struct {
	*Proxy
	udp, tcp string
	sink     *memSink
	done     chan error
	shut     bool
}

// startProxy starts a proxy for upstream with cfg's other fields.
func startProxy(t testing.TB, cfg Config) *testProxy {
	t.Helper()
	return startProxyWith(t, cfg, nil)
}

// startProxyWith runs prepare on the proxy before it serves (to set test
// hooks without racing the servers).
func startProxyWith(t testing.TB, cfg Config, prepare func(*Proxy)) *testProxy {
	t.Helper()
	sink := &memSink{}
	if cfg.Audit == nil {
		cfg.Audit = sink
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatalf("new proxy: %v", err)
	}
	p.SetPolicy(testSnapshot())
	if prepare != nil {
		prepare(p)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen udp: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen tcp: %v", err)
	}
	tp := &testProxy{Proxy: p, udp: pc.LocalAddr().String(), tcp: l.Addr().String(), sink: sink, done: make(chan error, 2)}
	go func() { tp.done <- p.ServeUDP(pc) }()
	go func() { tp.done <- p.ServeTCP(l) }()
	t.Cleanup(func() { tp.stop(t) })
	return tp
}

// stop shuts the proxy down (flushing queued audit events) and checks both
// servers returned ErrServerClosed.
func (tp *testProxy) stop(t testing.TB) {
	t.Helper()
	if tp.shut {
		return
	}
	tp.shut = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tp.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	for range 2 {
		select {
		case err := <-tp.done:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("serve returned %v, want ErrServerClosed", err)
			}
		case <-ctx.Done():
			t.Fatal("serve did not return after shutdown")
		}
	}
}

type queryOpt func(*dns.Msg, *dns.Client)

func fromAddr(ip string) queryOpt {
	return func(_ *dns.Msg, c *dns.Client) {
		a := net.ParseIP(ip)
		if c.Net == "tcp" {
			c.Dialer = &net.Dialer{LocalAddr: &net.TCPAddr{IP: a}}
		} else {
			c.Dialer = &net.Dialer{LocalAddr: &net.UDPAddr{IP: a}}
		}
	}
}

func withEDNS(size uint16) queryOpt {
	return func(m *dns.Msg, _ *dns.Client) { m.SetEdns0(size, false) }
}

// query sends one question to addr over netw ("udp" or "tcp").
func query(t testing.TB, addr, netw, name string, qtype uint16, opts ...queryOpt) *dns.Msg {
	t.Helper()
	r, err := tryQuery(addr, netw, name, qtype, opts...)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], netw, err)
	}
	return r
}

func tryQuery(addr, netw, name string, qtype uint16, opts ...queryOpt) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: netw, Timeout: 5 * time.Second}
	for _, o := range opts {
		o(m, c)
	}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		return nil, fmt.Errorf("exchange: %w", err)
	}
	return r, nil
}

func addrsOf(m *dns.Msg) []netip.Addr {
	var out []netip.Addr
	for _, rr := range m.Answer {
		switch v := rr.(type) {
		case *dns.A:
			a, _ := netip.AddrFromSlice(v.A.To4())
			out = append(out, a)
		case *dns.AAAA:
			a, _ := netip.AddrFromSlice(v.AAAA)
			out = append(out, a)
		}
	}
	return out
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func rcode(m *dns.Msg) string { return dns.RcodeToString[m.Rcode] }

func wantRcode(t testing.TB, m *dns.Msg, want int) {
	t.Helper()
	if m.Rcode != want {
		t.Fatalf("rcode %s, want %s; reply:\n%v", rcode(m), dns.RcodeToString[want], m)
	}
}

// wantSOA checks a negative answer carries the synthesized SOA.
func wantSOA(t testing.TB, m *dns.Msg) {
	t.Helper()
	if len(m.Answer) != 0 {
		t.Fatalf("negative answer has %d answer records: %v", len(m.Answer), m.Answer)
	}
	if len(m.Ns) != 1 {
		t.Fatalf("authority section has %d records, want the SOA", len(m.Ns))
	}
	soa, ok := m.Ns[0].(*dns.SOA)
	if !ok || soa.Minttl != negativeTTL || soa.Hdr.Ttl != negativeTTL {
		t.Fatalf("authority is %v, want a SOA with negative TTL %d", m.Ns[0], negativeTTL)
	}
}
