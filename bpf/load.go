package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// Config is what the programs rewrite to. An invalid (zero) AddrPort means
// "not offered": the traffic it would carry is denied. An IPv4 destination
// reached from an IPv6 socket (::ffff:a.b.c.d) uses the IPv4 entries.
type Config struct {
	Transparent4 netip.AddrPort // tcp/80,443 over IPv4
	Transparent6 netip.AddrPort // tcp/80,443 over IPv6
	DNS4         netip.AddrPort // udp+tcp/53 over IPv4
	DNS6         netip.AddrPort // udp+tcp/53 over IPv6
	// NetnsCookie of the network namespace the addresses above are
	// reachable in; sockets of any other namespace are denied. 0 disables
	// the check (not recommended).
	NetnsCookie uint64
}

func (c Config) validate() error {
	for _, x := range []struct {
		name string
		ap   netip.AddrPort
		v6   bool
	}{{"transparent4", c.Transparent4, false}, {"dns4", c.DNS4, false}, {"transparent6", c.Transparent6, true}, {"dns6", c.DNS6, true}} {
		if !x.ap.IsValid() {
			continue
		}
		a := x.ap.Addr()
		if x.ap.Port() == 0 || a.IsUnspecified() || (x.v6 && !a.Is6()) || (!x.v6 && !a.Unmap().Is4()) {
			return fmt.Errorf("bpf config: %s address %s must be a concrete %s address with a port", x.name, x.ap, map[bool]string{false: "IPv4", true: "IPv6"}[x.v6])
		}
	}
	return nil
}

// Program is one loaded program and the cgroup hook it belongs to.
type Program struct {
	Name    string
	Program *ebpf.Program
	Attach  ebpf.AttachType
}

// Objects are the loaded programs and maps.
type Objects struct {
	objs captureObjects
}

// Origin is what the programs recorded for a captured connection or query.
type Origin struct {
	Dst      netip.AddrPort // where the agent was going (IPv4 unmapped)
	CgroupID uint64         // the agent's cgroup (the inode number of its cgroup2 directory)
}

// ErrNotFound: no record for that connection or source.
var ErrNotFound = errors.New("no capture record")

// Load loads the programs with cfg baked in (nothing is attached). It needs
// root (CAP_BPF + CAP_NET_ADMIN).
func Load(cfg Config) (*Objects, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	spec, err := loadCapture()
	if err != nil {
		return nil, fmt.Errorf("bpf: read embedded object: %w", err)
	}
	set := func(name string, v any) error {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("bpf: object has no variable %s", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("bpf: set %s: %w", name, err)
		}
		return nil
	}
	ip4 := func(ap netip.AddrPort) [4]byte {
		if !ap.IsValid() {
			return [4]byte{}
		}
		return ap.Addr().Unmap().As4()
	}
	ip6 := func(ap netip.AddrPort) [16]byte {
		if !ap.IsValid() {
			return [16]byte{}
		}
		return ap.Addr().As16()
	}
	port := func(ap netip.AddrPort) [2]byte { // network byte order
		var b [2]byte
		if ap.IsValid() {
			binary.BigEndian.PutUint16(b[:], ap.Port())
		}
		return b
	}
	for _, kv := range []struct {
		name string
		v    any
	}{
		{captureVarTransparent4Ip, ip4(cfg.Transparent4)},
		{captureVarTransparent4Port, port(cfg.Transparent4)},
		{captureVarTransparent6Ip, ip6(cfg.Transparent6)},
		{captureVarTransparent6Port, port(cfg.Transparent6)},
		{captureVarDns4Ip, ip4(cfg.DNS4)},
		{captureVarDns4Port, port(cfg.DNS4)},
		{captureVarDns6Ip, ip6(cfg.DNS6)},
		{captureVarDns6Port, port(cfg.DNS6)},
		{captureVarNetnsCookie, cfg.NetnsCookie},
	} {
		if err := set(kv.name, kv.v); err != nil {
			return nil, err
		}
	}
	o := &Objects{}
	if err := spec.LoadAndAssign(&o.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("bpf: load programs: %+v", ve)
		}
		return nil, fmt.Errorf("bpf: load programs: %w", err)
	}
	return o, nil
}

// Close releases the programs and maps (attachments hold their own references).
func (o *Objects) Close() error {
	if err := o.objs.Close(); err != nil {
		return fmt.Errorf("bpf: close objects: %w", err)
	}
	return nil
}

// Programs lists every program with its cgroup attach type, in the order
// they should be attached (the recorders before the rewriters).
func (o *Objects) Programs() []Program {
	p := &o.objs.capturePrograms
	return []Program{
		{captureProgAvSockops, p.AvSockops, ebpf.AttachCGroupSockOps},
		{captureProgAvEgress, p.AvEgress, ebpf.AttachCGroupInetEgress},
		{captureProgAvRecvmsg4, p.AvRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg},
		{captureProgAvRecvmsg6, p.AvRecvmsg6, ebpf.AttachCGroupUDP6Recvmsg},
		{captureProgAvSendmsg4, p.AvSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
		{captureProgAvSendmsg6, p.AvSendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
		{captureProgAvConnect4, p.AvConnect4, ebpf.AttachCGroupInet4Connect},
		{captureProgAvConnect6, p.AvConnect6, ebpf.AttachCGroupInet6Connect},
	}
}

func addr16(ap netip.AddrPort) [16]byte { return ap.Addr().As16() }

func origin(v captureOrigin) Origin {
	return Origin{
		Dst:      netip.AddrPortFrom(netip.AddrFrom16(v.Addr).Unmap(), v.Port),
		CgroupID: v.CgroupId,
	}
}

// TakeConnOrigin returns and deletes the record of a captured TCP
// connection, keyed as the broker sees the accepted socket: peer = the
// agent's address, local = the broker's address it was redirected to.
// Each record is handed out once, so a later connection reusing the same
// 4-tuple can never inherit it.
func (o *Objects) TakeConnOrigin(peer, local netip.AddrPort) (Origin, error) {
	k := captureFlow{Src: addr16(peer), Dst: addr16(local), Sport: peer.Port(), Dport: local.Port()}
	var v captureOrigin
	if err := o.objs.ConnByFlow.LookupAndDelete(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Origin{}, ErrNotFound
		}
		return Origin{}, fmt.Errorf("bpf: look up connection %s -> %s: %w", peer, local, err)
	}
	return origin(v), nil
}

// DNSOrigin returns the record of the last UDP query a socket bound to src
// sent to the DNS proxy (src as the DNS proxy sees it).
func (o *Objects) DNSOrigin(src netip.AddrPort) (Origin, error) {
	k := captureSrcKey{Addr: addr16(src), Port: src.Port()}
	var v captureOrigin
	if err := o.objs.DnsBySrc.Lookup(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Origin{}, ErrNotFound
		}
		return Origin{}, fmt.Errorf("bpf: look up dns source %s: %w", src, err)
	}
	return origin(v), nil
}
