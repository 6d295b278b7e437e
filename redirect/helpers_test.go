package redirect

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/testutil/netns"
)

// canary counts every connection, byte and datagram it receives.
type canary struct {
	conns, bytes, packets atomic.Int64
}

// listenIn creates a listener inside ns; the listener stays in ns.
func listenIn(t *testing.T, ns *netns.NS, network, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen(network, addr); return err }); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, ns.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func listenPacketIn(t *testing.T, ns *netns.NS, network, addr string) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) { pc, err = net.ListenPacket(network, addr); return err }); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, ns.Name, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

func (c *canary) serveTCP(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		c.conns.Add(1)
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			n, _ := io.Copy(io.Discard, conn)
			c.bytes.Add(n)
		}()
	}
}

func (c *canary) serveUDP(pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		c.packets.Add(1)
		c.bytes.Add(int64(n))
	}
}

// origEcho answers each connection, after reading an HTTP request head,
// with a small HTTP/1.0 response whose body is "orig=<lookup result>".
type origEcho struct {
	mu   sync.Mutex
	seen []string
}

func (e *origEcho) serve(ln net.Listener, lookup func(net.Conn) (string, error)) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			orig, err := lookup(conn)
			if err != nil {
				orig = "error: " + err.Error()
			}
			e.mu.Lock()
			e.seen = append(e.seen, orig)
			e.mu.Unlock()
			r := bufio.NewReader(conn)
			for i := 0; i < 100; i++ { // request head, bounded
				line, err := r.ReadString('\n')
				if err != nil || strings.TrimSpace(line) == "" {
					break
				}
			}
			body := "orig=" + orig + "\n"
			fmt.Fprintf(conn, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
		}()
	}
}

// serveDNS answers every query with one A record (answer), echoing the
// question: enough for dig to print an answer section.
func serveDNS(pc net.PacketConn, answer netip.Addr) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if reply, ok := dnsReply(buf[:n], answer); ok {
			pc.WriteTo(reply, from)
		}
	}
}

func dnsReply(q []byte, answer netip.Addr) ([]byte, bool) {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:6]) != 1 {
		return nil, false
	}
	// Find the end of the single question (name, type, class).
	i := 12
	for i < len(q) && q[i] != 0 {
		i += int(q[i]) + 1
	}
	i += 5
	if i > len(q) {
		return nil, false
	}
	out := append([]byte(nil), q[:i]...)
	out[2] = 0x84 | (q[2] & 0x01) // QR, AA, keep RD
	out[3] = 0x80                 // RA, NOERROR
	binary.BigEndian.PutUint16(out[6:8], 1)
	binary.BigEndian.PutUint16(out[8:10], 0)
	binary.BigEndian.PutUint16(out[10:12], 0)
	a := answer.As4()
	out = append(out, 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4)
	return append(out, a[:]...), true
}

// dialFrom dials from inside ns with a short timeout.
func dialFrom(ns *netns.NS, network, addr string, timeout time.Duration) error {
	return ns.Do(func() error {
		c, err := net.DialTimeout(network, addr, timeout)
		if err != nil {
			return err
		}
		_, err = c.Write([]byte("canary-bytes"))
		c.Close()
		return err
	})
}

// udpRoundTrip sends one datagram on a connected socket from ns and waits
// for a reply or an error (ECONNREFUSED when ICMP port-unreachable came back).
func udpRoundTrip(ns *netns.NS, addr string, wait time.Duration) error {
	return ns.Do(func() error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte("quic-initial")); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(wait))
		_, err = c.Read(make([]byte, 64))
		return err
	})
}

// isTimeout reports a dial or read that got no answer.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// serveDNSTCP is serveDNS over TCP (two-byte length prefix).
func serveDNSTCP(ln net.Listener, answer netip.Addr) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			var l [2]byte
			if _, err := io.ReadFull(conn, l[:]); err != nil {
				return
			}
			q := make([]byte, binary.BigEndian.Uint16(l[:]))
			if _, err := io.ReadFull(conn, q); err != nil {
				return
			}
			if reply, ok := dnsReply(q, answer); ok {
				binary.BigEndian.PutUint16(l[:], uint16(len(reply)))
				conn.Write(append(l[:], reply...))
			}
		}()
	}
}
