package redirect

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/agentvault/agent-vault/internal/testutil/netns"
)

// A dialer using MarkControl produces sockets carrying BypassMark.
func TestMarkControlSetsBypassMark(t *testing.T) {
	netns.RequirePrivileged(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{Control: MarkControl}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial with MarkControl: %v", err)
	}
	defer c.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	var gerr error
	rc.Control(func(fd uintptr) { mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if gerr != nil || mark != BypassMark {
		t.Errorf("SO_MARK = %#x, %v; want %#x", mark, gerr, BypassMark)
	}
}

// OriginalDst refuses what it cannot answer instead of guessing.
func TestOriginalDstRejectsNonTCP(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, err := OriginalDst(a); err == nil {
		t.Error("OriginalDst(net.Pipe) = nil error")
	}
}
