package mitm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/agentvault/agent-vault/mitm/scrub"
)

// rwcOf is an upgraded connection reading from r (writes are dropped).
type rwcOf struct{ io.Reader }

func (rwcOf) Write(p []byte) (int, error) { return len(p), nil }
func (rwcOf) Close() error                { return nil }

// Every frame shape reaches the agent with its header unchanged and its
// payload redacted, however the upstream's bytes are split.
func TestWSScrubberFrames(t *testing.T) {
	secret := []byte(sentinel)
	s := scrub.New(scrub.Forms([][]byte{secret}))
	var in bytes.Buffer
	big := bytes.Repeat([]byte("y"), 70<<10) // 64-bit length
	copy(big[32<<10-5:], secret)             // across the reader's chunk
	mid := bytes.Repeat([]byte("z"), 300)    // 16-bit length
	copy(mid[290-len(secret):], secret)
	frames := []struct {
		fin     bool
		op      byte
		payload []byte
	}{
		{true, wsText, []byte("token " + sentinel + " end")},
		{true, wsPing, secret},
		{false, wsText, []byte("first part " + sentinel)}, // a fragmented message
		{true, 0x0, []byte(sentinel + " continued")},
		{true, wsBinary, mid},
		{true, wsBinary, big},
		{true, wsPong, nil},
		{true, wsClose, append([]byte{0x03, 0xe8}, secret...)},
	}
	for _, f := range frames {
		wsWriteFrame(&in, f.fin, f.op, f.payload, false)
	}
	for name, split := range map[string]func(io.Reader) io.Reader{
		"whole": func(r io.Reader) io.Reader { return r }, "bytes": iotest.OneByteReader, "halves": iotest.HalfReader,
	} {
		out, err := io.ReadAll(newWSScrubber(rwcOf{split(bytes.NewReader(in.Bytes()))}, s))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(out) != in.Len() || bytes.Contains(out, secret) {
			t.Fatalf("%s: %d bytes out of %d, secret present: %v", name, len(out), in.Len(), bytes.Contains(out, secret))
		}
		r := bytes.NewReader(out)
		for i, f := range frames {
			op, payload, err := wsReadFrame(r)
			if err != nil || op != f.op || len(payload) != len(f.payload) {
				t.Fatalf("%s: frame %d: opcode %d, %d bytes, %v", name, i, op, len(payload), err)
			}
			if bytes.Contains(f.payload, secret) && !bytes.Contains(payload, []byte("[REDACTED")) {
				t.Fatalf("%s: frame %d not redacted: %.60q", name, i, payload)
			}
		}
	}
}

// A frame the broker cannot read ends the stream before any of it is
// relayed; a frame cut short ends it with an error.
func TestWSScrubberRefuses(t *testing.T) {
	s := scrub.New(scrub.Forms([][]byte{[]byte(sentinel)}))
	var ok bytes.Buffer
	wsWriteFrame(&ok, true, wsText, []byte("fine"), false)
	for name, tc := range map[string]struct {
		frame []byte
		want  error
	}{
		"compressed (RSV1)": {[]byte{0xc1, 0x05, 'x', 'x', 'x', 'x', 'x'}, errWSFrame},
		"masked":            {[]byte{0x81, 0x85, 1, 2, 3, 4, 'x', 'x', 'x', 'x', 'x'}, errWSFrame},
		"length over 2^63":  {[]byte{0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0}, errWSFrame},
		"cut short":         {[]byte{0x81, 0x0a, 'x', 'x'}, io.ErrUnexpectedEOF},
		"cut in the header": {[]byte{0x81, 0x7e, 0x01}, io.ErrUnexpectedEOF},
	} {
		out, err := io.ReadAll(newWSScrubber(rwcOf{io.MultiReader(bytes.NewReader(ok.Bytes()), bytes.NewReader(tc.frame))}, s))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
		if name != "cut short" && !bytes.Equal(out, ok.Bytes()) {
			t.Errorf("%s: relayed %q beyond the good frame", name, out[ok.Len():])
		}
	}
}

// An upgrade the broker could not scrub is refused with 502
// unscrubbable_body: a protocol other than WebSocket, or a WebSocket
// extension the upstream accepted though it was never offered.
func TestUnscrubbableUpgradeRefused(t *testing.T) {
	e := newEnv(t)
	for _, answer := range []string{
		"Upgrade: h2c\r\nConnection: Upgrade\r\n",
		"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
	} {
		up := startRawUpstream(t, e, func(c net.Conn, br *bufio.Reader) {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\n"+answer+"\r\n")
			wsWriteFrame(c, true, wsText, []byte("never relayed"), false)
			time.Sleep(100 * time.Millisecond)
		})
		conn := dialTunnel(t, e, up.port)
		proto := "websocket"
		if strings.Contains(answer, "h2c") {
			proto = "h2c"
		}
		fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: api.example.test:%d\r\nUpgrade: %s\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", up.port, proto)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		expectError(t, resp, http.StatusBadGateway, CodeUnscrubbableEncode)
		conn.Close()
	}
}
