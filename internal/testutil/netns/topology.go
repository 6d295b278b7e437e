package netns

import (
	"net/netip"
	"testing"
)

// Topology is the three-namespace layout of TESTING.md, without NAT:
//
//	Agent  eth0   10.77.1.2/24  fd77:1::2/64   default via the gateway
//	GW     agent0 10.77.1.1/24  fd77:1::1/64   forwarding on
//	       net0   10.77.2.1/24  fd77:2::1/64
//	Net    eth0   10.77.2.2/24  fd77:2::2/64   + ExtraNet addresses, routes back to the agents
type Topology struct {
	Agent, GW, Net *NS

	AgentIface   string // in Agent, towards GW
	GWAgentIface string // in GW, towards Agent: the gateway interface of shape G
	GWNetIface   string // in GW, towards Net
	NetIface     string // in Net, towards GW

	AgentV4, AgentV6     netip.Addr
	GWAgentV4, GWAgentV6 netip.Addr
	GWNetV4, GWNetV6     netip.Addr
	NetV4, NetV6         netip.Addr
	ExtraNet             []netip.Addr // extra addresses on Net's eth0
}

// Fixed addresses (they live only inside each run's own namespaces).
var (
	AgentV4   = netip.MustParseAddr("10.77.1.2")
	AgentV6   = netip.MustParseAddr("fd77:1::2")
	GWAgentV4 = netip.MustParseAddr("10.77.1.1")
	GWAgentV6 = netip.MustParseAddr("fd77:1::1")
	GWNetV4   = netip.MustParseAddr("10.77.2.1")
	GWNetV6   = netip.MustParseAddr("fd77:2::1")
	NetV4     = netip.MustParseAddr("10.77.2.2")
	NetV6     = netip.MustParseAddr("fd77:2::2")
)

// Fixed MAC addresses (locally administered), for static neighbour entries.
const (
	macAgent   = "02:77:01:00:00:02"
	macGWAgent = "02:77:01:00:00:01"
	macGWNet   = "02:77:02:00:00:01"
	macNet     = "02:77:02:00:00:02"
)

// NewTopology builds the three namespaces, the two veth pairs, addresses
// (IPv6 without duplicate address detection, so usable at once), routes and
// forwarding, and tears everything down in t.Cleanup. extra addresses (v4
// inside 10.77.2.0/24 or v6 inside fd77:2::/64) are added to Net's eth0.
func NewTopology(t testing.TB, extra ...netip.Addr) *Topology {
	t.Helper()
	topo := &Topology{
		Agent: New(t, "agent"), GW: New(t, "gw"), Net: New(t, "net"),
		AgentIface: "eth0", GWAgentIface: "agent0", GWNetIface: "net0", NetIface: "eth0",
		AgentV4: AgentV4, AgentV6: AgentV6, GWAgentV4: GWAgentV4, GWAgentV6: GWAgentV6,
		GWNetV4: GWNetV4, GWNetV6: GWNetV6, NetV4: NetV4, NetV6: NetV6,
		ExtraNet: extra,
	}
	a, g, n := topo.Agent, topo.GW, topo.Net
	// Veths are created inside the namespaces, never in the caller's, so
	// interface names cannot collide with another run's.
	a.MustIP(t, "link", "add", topo.AgentIface, "address", macAgent, "type", "veth", "peer", "name", topo.GWAgentIface, "address", macGWAgent, "netns", g.Name)
	n.MustIP(t, "link", "add", topo.NetIface, "address", macNet, "type", "veth", "peer", "name", topo.GWNetIface, "address", macGWNet, "netns", g.Name)

	addr := func(ns *NS, dev string, p string) { ns.MustIP(t, "addr", "add", p, "dev", dev, "nodad") }
	addr4 := func(ns *NS, dev string, p string) { ns.MustIP(t, "addr", "add", p, "dev", dev) }
	addr4(a, topo.AgentIface, "10.77.1.2/24")
	addr(a, topo.AgentIface, "fd77:1::2/64")
	addr4(g, topo.GWAgentIface, "10.77.1.1/24")
	addr(g, topo.GWAgentIface, "fd77:1::1/64")
	addr4(g, topo.GWNetIface, "10.77.2.1/24")
	addr(g, topo.GWNetIface, "fd77:2::1/64")
	addr4(n, topo.NetIface, "10.77.2.2/24")
	addr(n, topo.NetIface, "fd77:2::2/64")
	for _, e := range extra {
		if e.Is4() {
			addr4(n, topo.NetIface, e.String()+"/32")
		} else {
			addr(n, topo.NetIface, e.String()+"/128")
		}
	}
	for _, x := range []struct {
		ns  *NS
		dev string
	}{{a, topo.AgentIface}, {g, topo.GWAgentIface}, {g, topo.GWNetIface}, {n, topo.NetIface}} {
		x.ns.MustIP(t, "link", "set", x.dev, "up")
	}
	// Static neighbours: the first neighbour solicitation on a fresh veth
	// is often lost, and its retry comes 1 s later.
	neigh := func(ns *NS, dev string, ip netip.Addr, mac string) {
		ns.MustIP(t, "neigh", "replace", ip.String(), "lladdr", mac, "dev", dev, "nud", "permanent")
	}
	for _, ip := range []netip.Addr{GWAgentV4, GWAgentV6} {
		neigh(a, topo.AgentIface, ip, macGWAgent)
	}
	for _, ip := range []netip.Addr{AgentV4, AgentV6} {
		neigh(g, topo.GWAgentIface, ip, macAgent)
	}
	for _, ip := range append([]netip.Addr{NetV4, NetV6}, extra...) {
		neigh(g, topo.GWNetIface, ip, macNet)
	}
	for _, ip := range []netip.Addr{GWNetV4, GWNetV6} {
		neigh(n, topo.NetIface, ip, macGWNet)
	}
	a.MustIP(t, "route", "add", "default", "via", "10.77.1.1")
	a.MustIP(t, "-6", "route", "add", "default", "via", "fd77:1::1")
	n.MustIP(t, "route", "add", "10.77.1.0/24", "via", "10.77.2.1")
	n.MustIP(t, "-6", "route", "add", "fd77:1::/64", "via", "fd77:2::1")
	for _, kv := range [][2]string{{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"}} {
		if err := g.Sysctl(kv[0], kv[1]); err != nil {
			t.Fatalf("sysctl %s in %s: %v", kv[0], g.Name, err)
		}
	}
	return topo
}
