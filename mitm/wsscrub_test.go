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

// Every message reaches the agent whole and redacted, however the
// upstream fragments it and however its bytes are split on the wire: a
// value split across fragments (even one byte per fragment) is found,
// control frames between fragments pass, and lengths are kept.
func TestWSScrubberMessages(t *testing.T) {
	secret := []byte(sentinel)
	s := scrub.New(scrub.Forms([][]byte{secret}))
	big := bytes.Repeat([]byte("y"), 70<<10) // 64-bit length, several windows
	copy(big[wsChunk-5:], secret)            // across a window's end
	mid := bytes.Repeat([]byte("z"), 300)    // 16-bit length
	copy(mid[290-len(secret):], secret)
	type frame struct {
		fin     bool
		op      byte
		payload []byte
	}
	var frames []frame
	var want []wsMessage
	add := func(op byte, payload []byte, cuts ...int) { // one message, fragmented at cuts
		last := 0
		for i, c := range append(cuts, len(payload)) {
			fop := op
			if i > 0 {
				fop = 0
			}
			frames = append(frames, frame{c == len(payload), fop, payload[last:c]})
			last = c
		}
		want = append(want, wsMessage{op, payload})
	}
	add(wsText, []byte("token "+sentinel+" end"))
	add(wsPing, secret)
	add(wsText, []byte("first part "+sentinel+" continued"), 14, 20) // the value across three fragments
	add(wsBinary, mid)
	add(wsBinary, big)
	add(wsBinary, append([]byte("x"), secret...), 2, 3, 4, 5, 6, 7, 8, 9, 10) // a byte a fragment
	add(wsPong, nil)
	add(wsText, []byte("fragment then control: "+sentinel), 30)
	add(wsClose, append([]byte{0x03, 0xe8}, secret...))
	// a ping between two fragments of one message
	frames = append(frames[:len(frames)-2], frame{true, wsPing, []byte("between")}, frames[len(frames)-2], frames[len(frames)-1])
	want = append(want[:len(want)-2], wsMessage{wsPing, []byte("between")}, want[len(want)-2], want[len(want)-1])

	var in bytes.Buffer
	for _, f := range frames {
		wsWriteFrame(&in, f.fin, f.op, f.payload, false)
	}
	// a ping whose length came in the 16-bit form (allowed by the framing,
	// if not minimal): the agent gets the short form
	in.Write([]byte{0x89, 126, 0, 4, 'p', 'i', 'n', 'g'})
	want = append(want, wsMessage{wsPing, []byte("ping")})
	for name, split := range map[string]func(io.Reader) io.Reader{
		"whole": func(r io.Reader) io.Reader { return r }, "bytes": iotest.OneByteReader, "halves": iotest.HalfReader,
	} {
		out, err := io.ReadAll(newWSScrubber(rwcOf{split(bytes.NewReader(in.Bytes()))}, s))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if bytes.Contains(out, secret) {
			t.Fatalf("%s: the secret is in the output", name)
		}
		got, err := wsMessages(out)
		if err != nil || len(got) != len(want) {
			t.Fatalf("%s: %d messages, %v; want %d", name, len(got), err, len(want))
		}
		for i, m := range want {
			redacted := bytes.Clone(m.payload)
			s.Redact(redacted)
			if got[i].op != m.op || !bytes.Equal(got[i].payload, redacted) {
				t.Fatalf("%s: message %d: opcode %d, %.60q; want opcode %d, %.60q", name, i, got[i].op, got[i].payload, m.op, redacted)
			}
			if bytes.Contains(m.payload, secret) && !bytes.Contains(got[i].payload, []byte("[REDACTED")) {
				t.Fatalf("%s: message %d not redacted", name, i)
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
		"compressed (RSV1)":      {[]byte{0xc1, 0x05, 'x', 'x', 'x', 'x', 'x'}, errWSFrame},
		"masked":                 {[]byte{0x81, 0x85, 1, 2, 3, 4, 'x', 'x', 'x', 'x', 'x'}, errWSFrame},
		"length over 2^63":       {[]byte{0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0}, errWSFrame},
		"cut short":              {[]byte{0x81, 0x0a, 'x', 'x'}, io.ErrUnexpectedEOF},
		"cut in the header":      {[]byte{0x81, 0x7e, 0x01}, io.ErrUnexpectedEOF},
		"continuation first":     {[]byte{0x80, 0x01, 'x'}, errWSFrame},
		"new message inside one": {[]byte{0x01, 0x01, 'x', 0x81, 0x01, 'y'}, errWSFrame},
		"fragmented ping":        {[]byte{0x09, 0x01, 'x'}, errWSFrame},
		"long ping":              {append([]byte{0x89, 0x7e, 0x00, 0x7e}, make([]byte, 126)...), errWSFrame},
		"reserved opcode":        {[]byte{0x83, 0x01, 'x'}, errWSFrame},
	} {
		out, err := io.ReadAll(newWSScrubber(rwcOf{io.MultiReader(bytes.NewReader(ok.Bytes()), bytes.NewReader(tc.frame))}, s))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
		// (a first fragment that cannot begin a value is relayed before the
		// second one shows the order is wrong)
		if name != "cut short" && name != "new message inside one" && !bytes.Equal(out, ok.Bytes()) {
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
		conn, _ := e.tunnelTo(t, up.port)
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

// Values that overlap each other are redacted whole when the overlap spans
// fragments: the held tail stays unmasked until the next fragment shows
// what it belongs to (masking it early left the second value's rest in
// clear).
func TestWSScrubberOverlappingValues(t *testing.T) {
	first, second := "tok_AAAA_shared9", "shared9_BBBB_rest_of_second_key"
	s := scrub.New(scrub.Forms([][]byte{[]byte(first), []byte(second)}))
	for _, msg := range [][]string{
		{first, "_BBBB_rest_of_second_key"},
		{"tok_AAAA_sha", "red9_BBBB_rest", "_of_second_key"},
		{"XKEY-1234-XKEY", "-1234-XKEY"},
	} {
		ss := s
		if msg[0] == "XKEY-1234-XKEY" { // a value that overlaps itself
			ss = scrub.New(scrub.Forms([][]byte{[]byte("XKEY-1234-XKEY")}))
		}
		var in bytes.Buffer
		for i, part := range msg {
			op := byte(wsText)
			if i > 0 {
				op = 0
			}
			wsWriteFrame(&in, i == len(msg)-1, op, []byte(part), false)
		}
		out, err := io.ReadAll(newWSScrubber(rwcOf{bytes.NewReader(in.Bytes())}, ss))
		if err != nil {
			t.Fatal(err)
		}
		got, err := wsMessages(out)
		if err != nil || len(got) != 1 {
			t.Fatalf("%q: %d messages, %v", msg, len(got), err)
		}
		// every byte of both values is masked: no 4 bytes of either remain
		whole := strings.Join(msg, "")
		if len(got[0].payload) != len(whole) {
			t.Fatalf("%q: got %q", msg, got[0].payload)
		}
		for _, v := range []string{first, second, "XKEY-1234-XKEY"} {
			for i := 0; i+4 <= len(v); i++ {
				if bytes.Contains(got[0].payload, []byte(v[i:i+4])) {
					t.Fatalf("%q: got %q, which keeps %q", msg, got[0].payload, v[i:i+4])
				}
			}
		}
	}
}
