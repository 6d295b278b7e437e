package appliance

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// CanaryTCPPorts and CanaryUDPPorts are where the canary listens, on both
// of its addresses: whatever reaches it was let through.
var (
	CanaryTCPPorts = []int{22, 80, 443, 853, 8080}
	CanaryUDPPorts = []int{53, 443, 853, 9999}
)

// Canary counts every connection, byte and datagram it receives.
type Canary struct {
	Conns, Bytes, Datagrams atomic.Int64
	closers                 []io.Closer
	wg                      sync.WaitGroup
}

// StartCanary listens on the canary ports of each address (call it inside
// the namespace that owns the addresses).
func StartCanary(addrs ...netip.Addr) (*Canary, error) {
	c := &Canary{}
	for _, a := range addrs {
		for _, p := range CanaryTCPPorts {
			l, err := net.Listen("tcp", netip.AddrPortFrom(a, uint16(p)).String())
			if err != nil {
				c.Close()
				return nil, err
			}
			c.closers = append(c.closers, l)
			c.wg.Add(1)
			go c.acceptLoop(l)
		}
		for _, p := range CanaryUDPPorts {
			pc, err := net.ListenPacket("udp", netip.AddrPortFrom(a, uint16(p)).String())
			if err != nil {
				c.Close()
				return nil, err
			}
			c.closers = append(c.closers, pc)
			c.wg.Add(1)
			go c.readLoop(pc)
		}
	}
	return c, nil
}

func (c *Canary) acceptLoop(l net.Listener) {
	defer c.wg.Done()
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		c.Conns.Add(1)
		go func() {
			defer conn.Close()
			n, _ := io.Copy(io.Discard, conn)
			c.Bytes.Add(n)
		}()
	}
}

func (c *Canary) readLoop(pc net.PacketConn) {
	defer c.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		c.Datagrams.Add(1)
		c.Bytes.Add(int64(n))
	}
}

// Total is everything the canary saw.
func (c *Canary) Total() (conns, bytes, datagrams int64) {
	return c.Conns.Load(), c.Bytes.Load(), c.Datagrams.Load()
}

// Close stops every listener.
func (c *Canary) Close() {
	for _, cl := range c.closers {
		cl.Close()
	}
	c.wg.Wait()
}
