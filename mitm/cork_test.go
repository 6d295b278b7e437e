package mitm

import (
	"net"
	"testing"
)

// countingConn is a net.Conn whose writes only count.
type countingConn struct {
	net.Conn
	writes, bytes int
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes++
	c.bytes += len(p)
	return len(p), nil
}

// A corked large write (two full TLS 1.3 records, as crypto/tls writes a
// 32 KiB body chunk) goes out in one write and, once the connection has its
// cork buffer, allocates nothing: a buffer regrown per write cost 58 KiB of
// garbage and ~9 page faults per 32 KiB streamed.
func TestCorkedWritesReuseTheBuffer(t *testing.T) {
	const record = 16384 + 5 + 1 + 16 // payload, header, inner type, GCM tag
	under := &countingConn{}
	c := &trackedConn{Conn: under}
	rec := make([]byte, record)
	cycle := func() {
		c.cork()
		c.Write(rec)
		c.Write(rec)
		if err := c.uncork(); err != nil {
			t.Fatal(err)
		}
	}
	cycle()
	if under.writes != 1 || under.bytes != 2*record {
		t.Fatalf("two corked records went out in %d writes, %d bytes; want 1, %d", under.writes, under.bytes, 2*record)
	}
	if a := testing.AllocsPerRun(50, cycle); a != 0 {
		t.Fatalf("a corked write allocates %.1f times; want 0", a)
	}
}
