package dnsproxy

import (
	"context"
	"log/slog"
	"net"
	"net/netip"

	"github.com/miekg/dns"

	"github.com/agentvault/agent-vault/policy"
)

// negativeTTL is the TTL of the synthesized SOA, hence how long agents cache
// a denial or an empty answer.
const negativeTTL = 60

// reservedTTL is the TTL of agent-vault.internal answers.
const reservedTTL = 60

func (p *Proxy) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	src := addrPortOf(w.RemoteAddr())
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	ctx := context.Background()
	if tcp {
		ctx = p.withConnIdentity(ctx, w.RemoteAddr(), w.LocalAddr())
	}
	resp := p.answer(ctx, req, src, addrPortOf(w.LocalAddr()).Addr(), tcp)
	if !tcp {
		resp.Truncate(clientUDPSize(req))
	}
	if p.beforeWrite != nil {
		p.beforeWrite(resp)
	}
	if err := w.WriteMsg(resp); err != nil {
		p.log.Debug("dns reply not sent", "src", src.String(), "err", err)
	}
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch v := a.(type) {
	case *net.UDPAddr:
		return v.AddrPort()
	case *net.TCPAddr:
		return v.AddrPort()
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// clientUDPSize is the largest reply the client accepts over UDP.
func clientUDPSize(req *dns.Msg) int {
	if opt := req.IsEdns0(); opt != nil {
		return int(min(max(opt.UDPSize(), dns.MinMsgSize), ednsSize))
	}
	return dns.MinMsgSize
}

// identify returns the agent behind src (or behind the TCP connection whose
// identity ctx carries), or nil.
func (p *Proxy) identify(ctx context.Context, snap *policy.Snapshot, src netip.AddrPort) *policy.Agent {
	if snap == nil {
		return nil
	}
	if id, ok := ctx.Value(connIdentityKey{}).(connIdentity); ok {
		if !id.ok {
			return nil
		}
		a, _ := snap.Agent(id.agent)
		return a
	}
	if p.cfg.Identify == nil {
		a, _ := snap.AgentBySource(src.Addr())
		return a
	}
	name, ok := p.cfg.Identify(src)
	if !ok {
		return nil
	}
	a, _ := snap.Agent(name)
	return a
}

// answer builds the reply to one single-question query (acceptQueries let
// nothing else through). Pins are written before it returns.
func (p *Proxy) answer(ctx context.Context, req *dns.Msg, src netip.AddrPort, local netip.Addr, tcp bool) *dns.Msg {
	p.stats.queries.Add(1)
	now := p.now()
	if len(req.Question) != 1 {
		return newReply(req, dns.RcodeFormatError)
	}
	q := req.Question[0]
	snap := p.snap.Load()
	agent := p.identify(ctx, snap, src)
	name := policy.NormalizeHost(q.Name)

	if snap == nil || agent == nil || !agent.Active(now) {
		reason, key := ReasonUnknownAgent, src.Addr().Unmap().String()
		switch {
		case snap == nil:
			reason = ReasonNoPolicy
		case agent != nil:
			reason, key = ReasonAgentInactive, agent.Name
		}
		p.refuseAudited(agent, src, name, q.Qtype, reason, string(reason)+"|"+key)
		return newReply(req, dns.RcodeRefused)
	}
	if !p.rate.allow(agent.Name, now) {
		p.stats.rateLimited.Add(1)
		p.refuseAudited(agent, src, name, q.Qtype, ReasonRateLimited, string(ReasonRateLimited)+"|"+agent.Name)
		return newReply(req, dns.RcodeRefused)
	}
	if opt := req.IsEdns0(); opt != nil && opt.Version() != 0 {
		p.record(agent, src, name, q.Qtype, false, ReasonBadVersion, dns.RcodeBadVers)
		return newReply(req, dns.RcodeBadVers)
	}

	d := Decide(snap, agent, q, p.cfg.IPv6)
	switch d.Action {
	case Forward:
		return p.resolve(ctx, req, agent, src, d, tcp)
	case Reserved:
		return p.reserved(req, agent, src, local, d)
	case NoData:
		p.stats.nodata.Add(1)
		p.record(agent, src, d.Name, q.Qtype, false, d.Reason, dns.RcodeSuccess)
		return negative(req, dns.RcodeSuccess)
	case Refuse:
		p.stats.refused.Add(1)
		p.record(agent, src, name, q.Qtype, false, d.Reason, dns.RcodeRefused)
		return newReply(req, dns.RcodeRefused)
	default:
		p.stats.denied.Add(1)
		p.record(agent, src, name, q.Qtype, false, d.Reason, dns.RcodeNameError)
		return negative(req, dns.RcodeNameError)
	}
}

// refuseAudited counts a refusal and audits it once per window for key.
func (p *Proxy) refuseAudited(agent *policy.Agent, src netip.AddrPort, name string, qtype uint16, reason Reason, key string) {
	p.stats.refused.Add(1)
	if p.refusals.first(key, p.now()) {
		p.record(agent, src, name, qtype, false, reason, dns.RcodeRefused)
		return
	}
	p.logQuery(agent, src, name, qtype, reason, dns.RcodeRefused)
}

// record queues the audit event of an answer that is not awaited, and logs
// the query.
func (p *Proxy) record(agent *policy.Agent, src netip.AddrPort, name string, qtype uint16, allowed bool, reason Reason, rcode int) {
	p.audit.enqueue(newEvent(p.now(), agent, src, name, qtype, allowed, reason))
	p.logQuery(agent, src, name, qtype, reason, rcode)
}

func (p *Proxy) logQuery(agent *policy.Agent, src netip.AddrPort, name string, qtype uint16, reason Reason, rcode int) {
	if !p.log.Enabled(context.Background(), slog.LevelDebug) {
		return // every query comes here: build nothing the log would drop
	}
	agentName := ""
	if agent != nil {
		agentName = agent.Name
	}
	p.log.Debug("dns query", "agent", agentName, "src", src.Addr().String(), "name", truncate(name, maxAuditedName),
		"type", typeString(qtype), "reason", string(reason), "rcode", dns.RcodeToString[rcode])
}

// resolve forwards an allowed question, audits it while the upstream
// answers, filters and pins the addresses, and builds the reply.
func (p *Proxy) resolve(ctx context.Context, req *dns.Msg, agent *policy.Agent, src netip.AddrPort, d Decision, tcp bool) *dns.Msg {
	q := req.Question[0]
	ctx, cancel := context.WithTimeout(ctx, p.cfg.UpstreamTimeout)
	defer cancel()
	ev := newEvent(p.now(), agent, src, d.Name, q.Qtype, true, ReasonAllowed)
	auditDone := make(chan error, 1)
	go func() { auditDone <- p.audit.appendNow(ctx, ev) }()

	p.stats.forwarded.Add(1)
	r, err := p.exchange(ctx, d.Name, q.Qtype, tcp)
	if aerr := <-auditDone; aerr != nil {
		p.log.Error("dns answer withheld: audit event not recorded", "agent", agent.Name, "name", d.Name, "err", aerr)
		p.stats.servfail.Add(1)
		return newReply(req, dns.RcodeServerFailure)
	}
	if err != nil {
		p.log.Warn("dns upstream failed", "agent", agent.Name, "name", d.Name, "type", typeString(q.Qtype), "err", err)
		p.stats.servfail.Add(1)
		return newReply(req, dns.RcodeServerFailure)
	}
	switch r.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		p.logQuery(agent, src, d.Name, q.Qtype, ReasonAllowed, dns.RcodeNameError)
		return negative(req, dns.RcodeNameError)
	default:
		p.log.Warn("dns upstream failed", "agent", agent.Name, "name", d.Name, "type", typeString(q.Qtype),
			"rcode", dns.RcodeToString[r.Rcode])
		p.stats.servfail.Add(1)
		return newReply(req, dns.RcodeServerFailure)
	}

	addrs, ttls := answerAddrs(r, d.Name, q.Qtype)
	kept := 0
	for i, a := range addrs {
		if !policy.UpstreamAddrAllowed(a, p.cfg.AllowPrivate) {
			continue
		}
		addrs[kept], ttls[kept] = a, ttls[i]
		kept++
	}
	if dropped := len(addrs) - kept; dropped > 0 {
		p.stats.rebinding.Add(1)
		p.log.Warn("dns answer: private addresses dropped", "agent", agent.Name, "name", d.Name, "dropped", dropped, "kept", kept)
		p.audit.enqueue(newEvent(p.now(), agent, src, d.Name, q.Qtype, false, ReasonRebindingBlocked))
		if kept == 0 {
			p.stats.servfail.Add(1)
			return newReply(req, dns.RcodeServerFailure)
		}
	}
	addrs, ttls = addrs[:kept], ttls[:kept]
	if kept == 0 {
		p.logQuery(agent, src, d.Name, q.Qtype, ReasonAllowed, dns.RcodeSuccess)
		return negative(req, dns.RcodeSuccess)
	}
	for i, a := range addrs {
		p.pins.put(agent.Name, d.Name, a, leaseFor(ttls[i]))
	}
	resp := newReply(req, dns.RcodeSuccess)
	for i, a := range addrs {
		resp.Answer = append(resp.Answer, addrRR(q.Name, a, min(ttls[i], maxAnswerTTL)))
	}
	p.logQuery(agent, src, d.Name, q.Qtype, ReasonAllowed, dns.RcodeSuccess)
	return resp
}

// reserved answers agent-vault.internal with the broker's address for this
// client, and pins it like any answer.
func (p *Proxy) reserved(req *dns.Msg, agent *policy.Agent, src netip.AddrPort, local netip.Addr, d Decision) *dns.Msg {
	q := req.Question[0]
	var all []netip.Addr
	if p.cfg.BrokerAddrs != nil {
		all = p.cfg.BrokerAddrs(src)
	} else if local.IsValid() && !local.IsUnspecified() {
		all = []netip.Addr{local}
	}
	resp := newReply(req, dns.RcodeSuccess)
	for _, a := range all {
		a = a.Unmap()
		if (q.Qtype == dns.TypeA) != a.Is4() {
			continue
		}
		p.pins.put(agent.Name, d.Name, a, leaseFor(reservedTTL))
		resp.Answer = append(resp.Answer, addrRR(q.Name, a, reservedTTL))
	}
	if len(resp.Answer) == 0 {
		p.stats.nodata.Add(1)
		p.record(agent, src, d.Name, q.Qtype, false, ReasonNoBrokerAddress, dns.RcodeSuccess)
		return negative(req, dns.RcodeSuccess)
	}
	p.record(agent, src, d.Name, q.Qtype, true, ReasonReserved, dns.RcodeSuccess)
	return resp
}

func addrRR(owner string, a netip.Addr, ttl uint32) dns.RR {
	h := dns.RR_Header{Name: owner, Class: dns.ClassINET, Ttl: ttl}
	if a.Is4() {
		h.Rrtype = dns.TypeA
		return &dns.A{Hdr: h, A: a.AsSlice()}
	}
	h.Rrtype = dns.TypeAAAA
	return &dns.AAAA{Hdr: h, AAAA: a.AsSlice()}
}

// newReply starts a reply: the request's id, question and RD/CD bits,
// recursion available, and an OPT record when the request had one.
func newReply(req *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(req, rcode)
	m.RecursionAvailable = true
	if req.IsEdns0() != nil {
		m.SetEdns0(ednsSize, false)
	}
	return m
}

// negative is NXDOMAIN or NOERROR-no-data with a synthesized SOA in the
// authority section, so agents cache it for negativeTTL.
func negative(req *dns.Msg, rcode int) *dns.Msg {
	m := newReply(req, rcode)
	owner := "."
	if len(req.Question) == 1 {
		owner = dns.Fqdn(req.Question[0].Name)
	}
	m.Ns = []dns.RR{&dns.SOA{
		Hdr:     dns.RR_Header{Name: owner, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: negativeTTL},
		Ns:      policy.ReservedHost + ".",
		Mbox:    "hostmaster." + policy.ReservedHost + ".",
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  negativeTTL,
	}}
	return m
}
