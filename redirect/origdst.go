package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h),
// read at level SOL_IPV6. It has the same value as SO_ORIGINAL_DST.
const ip6tSOOriginalDst = 80

// connAddrs returns the accepted connection's local and peer addresses.
func connAddrs(c net.Conn) (local, peer netip.AddrPort, err error) {
	la, ok1 := c.LocalAddr().(*net.TCPAddr)
	ra, ok2 := c.RemoteAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return local, peer, fmt.Errorf("original destination: not a tcp connection (%T)", c.LocalAddr())
	}
	return la.AddrPort(), ra.AddrPort(), nil
}

// rawConn digs the syscall.RawConn out of c.
func rawConn(c net.Conn) (syscall.RawConn, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("original destination: connection %T has no file descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("original destination: raw conn: %w", err)
	}
	return rc, nil
}

// OriginalDst returns where a connection redirected by iptables (REDIRECT or
// DNAT) was going, via getsockopt SO_ORIGINAL_DST. The family is chosen by
// the accepted socket's local address: IPv4 (including ::ffff:-mapped on a
// dual-stack listener) reads SOL_IP, IPv6 reads SOL_IPV6
// IP6T_SO_ORIGINAL_DST. A connection that was not redirected returns its own
// local address (conntrack has no translation); callers compare against
// their listener's address to spot direct connections.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	local, _, err := connAddrs(c)
	if err != nil {
		return netip.AddrPort{}, err
	}
	rc, err := rawConn(c)
	if err != nil {
		return netip.AddrPort{}, err
	}
	v4 := local.Addr().Unmap().Is4()
	var out netip.AddrPort
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		out, serr = getOriginalDst(int(fd), v4)
	})
	if cerr != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: control: %w", cerr)
	}
	if serr != nil {
		return netip.AddrPort{}, serr
	}
	return out, nil
}

func getOriginalDst(fd int, v4 bool) (netip.AddrPort, error) {
	if v4 {
		var sa unix.RawSockaddrInet4
		l := uint32(unsafe.Sizeof(sa))
		if err := getsockopt(fd, unix.SOL_IP, unix.SO_ORIGINAL_DST, unsafe.Pointer(&sa), &l); err != nil {
			return netip.AddrPort{}, fmt.Errorf("original destination: getsockopt SO_ORIGINAL_DST: %w", err)
		}
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port), nil
	}
	var sa unix.RawSockaddrInet6
	l := uint32(unsafe.Sizeof(sa))
	if err := getsockopt(fd, unix.SOL_IPV6, ip6tSOOriginalDst, unsafe.Pointer(&sa), &l); err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: getsockopt IP6T_SO_ORIGINAL_DST: %w", err)
	}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port), nil
}

func getsockopt(fd, level, opt int, p unsafe.Pointer, l *uint32) error {
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt), uintptr(p), uintptr(unsafe.Pointer(l)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// MarkControl is a net.Dialer.Control function that sets SO_MARK =
// BypassMark on the broker's upstream sockets, so the local-mode backstop
// (and any rule an operator adds matching the mark) lets them through.
// It needs CAP_NET_ADMIN.
func MarkControl(network, address string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, BypassMark)
	}); err != nil {
		return fmt.Errorf("set bypass mark: control: %w", err)
	}
	if serr != nil {
		if errors.Is(serr, unix.EPERM) {
			return fmt.Errorf("set bypass mark on %s %s: needs CAP_NET_ADMIN: %w", network, address, serr)
		}
		return fmt.Errorf("set bypass mark on %s %s: %w", network, address, serr)
	}
	return nil
}
