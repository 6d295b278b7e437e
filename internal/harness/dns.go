package harness

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/miekg/dns"
)

// DNSServer is an authoritative server for a fixed set of names, standing in
// for the internet's DNS. It logs every question it receives, so tests can
// prove a denied name never reached it.
type DNSServer struct {
	Addr    string // host:port, UDP and TCP
	records map[string][]netip.Addr
	mu      sync.Mutex
	log     []string
	udp     *dns.Server
	tcp     *dns.Server
}

// StartDNS serves records (name → addresses) on addr ("127.0.0.1:0" picks a
// port shared by UDP and TCP).
func StartDNS(addr string, records map[string][]netip.Addr) (*DNSServer, error) {
	s := &DNSServer{records: map[string][]netip.Addr{}}
	for n, a := range records {
		s.records[dns.Fqdn(strings.ToLower(n))] = a
	}
	var pc net.PacketConn
	var l net.Listener
	var err error
	for try := 0; try < 20; try++ {
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return nil, fmt.Errorf("dns listen udp: %w", err)
		}
		if l, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("dns listen tcp: %w", err)
	}
	s.Addr = pc.LocalAddr().String()
	s.udp = &dns.Server{PacketConn: pc, Handler: s}
	s.tcp = &dns.Server{Listener: l, Handler: s}
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	return s, nil
}

// ServeDNS answers A and AAAA from the table, NXDOMAIN otherwise.
func (s *DNSServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if len(r.Question) == 1 {
		q := r.Question[0]
		name := strings.ToLower(q.Name)
		s.mu.Lock()
		s.log = append(s.log, fmt.Sprintf("%s %s", name, dns.TypeToString[q.Qtype]))
		s.mu.Unlock()
		addrs, ok := s.records[name]
		if !ok {
			m.Rcode = dns.RcodeNameError
		}
		for _, a := range addrs {
			hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 300}
			switch {
			case q.Qtype == dns.TypeA && a.Is4():
				hdr.Rrtype = dns.TypeA
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
			case q.Qtype == dns.TypeAAAA && a.Is6():
				hdr.Rrtype = dns.TypeAAAA
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
			}
		}
	}
	w.WriteMsg(m)
}

// Queries returns "name TYPE" for every question received.
func (s *DNSServer) Queries() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}

// Close stops both servers.
func (s *DNSServer) Close() {
	s.udp.Shutdown()
	s.tcp.Shutdown()
}
