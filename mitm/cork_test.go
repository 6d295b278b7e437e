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

// A corked large write (two or four full TLS 1.3 records, as crypto/tls
// writes a 32 KiB scrubbed chunk or a 64 KiB unscrubbed one) goes out in
// one write and allocates nothing once the pool has a cork buffer: a buffer
// regrown per write cost 58 KiB of garbage and ~9 page faults per 32 KiB
// streamed. Between writes the connection holds no buffer.
func TestCorkedWritesReuseTheBuffer(t *testing.T) {
	const record = 16384 + 5 + 1 + 16 // payload, header, inner type, GCM tag
	rec := make([]byte, record)
	for _, records := range []int{2, 4} {
		under := &countingConn{}
		c := &trackedConn{Conn: under}
		cycle := func() {
			c.cork()
			for range records {
				c.Write(rec)
			}
			if err := c.uncork(); err != nil {
				t.Fatal(err)
			}
		}
		cycle()
		if under.writes != 1 || under.bytes != records*record {
			t.Fatalf("%d corked records went out in %d writes, %d bytes; want 1, %d", records, under.writes, under.bytes, records*record)
		}
		if c.wbuf != nil {
			t.Fatal("the connection keeps its cork buffer between writes")
		}
		if a := testing.AllocsPerRun(50, cycle); a != 0 {
			t.Fatalf("a corked write of %d records allocates %.1f times; want 0", records, a)
		}
	}
}
