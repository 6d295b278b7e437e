package mitm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"sync"

	"github.com/agentvault/agent-vault/mitm/scrub"
)

// wsScrubber is the upstream side of an upgraded WebSocket connection whose
// upstream-to-agent messages are scrubbed: Read parses the upstream's frames
// (RFC 6455 section 5.2) and returns them with every injected value
// redacted. Writes (the agent's frames, masked, carrying nothing the agent
// was not given) pass through.
//
// A data message is scrubbed as one stream across its fragments, so a value
// split over two frames is found too: the message is re-fragmented on the
// way (section 5.4 allows that to an intermediary when no extension is in
// use). Bytes that could begin a value are held back until the next
// fragment shows whether they do; the message's final frame releases
// everything, so a complete message is never delayed. Control frames (at
// most 125 bytes, never fragmented) are scrubbed on their own and pass
// between the fragments as they arrive. Redaction keeps lengths.
//
// What it cannot read, it refuses rather than relays: a masked frame, a
// reserved bit (a compression extension; the broker strips the agent's
// Sec-WebSocket-Extensions offer, so none is negotiated), a reserved
// opcode, or fragments out of order end the connection.
type wsScrubber struct {
	io.ReadWriteCloser
	br *bufio.Reader
	s  *scrub.Scrubber

	// what Read returns next: a header, then a payload
	hdr    [10]byte
	hdrOut []byte
	body   []byte
	ctl    [125]byte // a control frame's payload

	// the data message in progress
	inMsg   bool
	msgOp   byte    // its opcode (text or binary), for its first frame out
	sentAny bool    // a frame of it went out
	pend    *[]byte // read, scrubbed as a window, not yet sent; pooled
	sent    int     // the start of pend went out as body: drop it before reading on
	pending int     // scrub.Window's carry between windows
	done    bool    // the message's last body is out: pend goes back once read

	// the upstream's data frame being read
	inFrame bool
	fin     bool  // it ends the message
	left    int64 // payload bytes still to read
}

// wsChunk is how much payload is read into the window at a time.
const wsChunk = 16 << 10

var wsBufs = sync.Pool{New: func() any { b := make([]byte, 0, wsChunk+1024); return &b }}

var errWSFrame = errors.New("websocket: the upstream sent a frame the broker cannot scrub (masked, reserved bits or opcode, or fragments out of order)")

func newWSScrubber(rwc io.ReadWriteCloser, s *scrub.Scrubber) *wsScrubber {
	return &wsScrubber{ReadWriteCloser: rwc, br: bufio.NewReader(rwc), s: s}
}

func (w *wsScrubber) Read(p []byte) (int, error) {
	for {
		if len(w.hdrOut) > 0 || len(w.body) > 0 {
			// a frame's header and as much of its body as fits go out in
			// one Read, so the agent gets one TLS record for them, not two
			n := copy(p, w.hdrOut)
			w.hdrOut = w.hdrOut[n:]
			if len(w.hdrOut) == 0 {
				k := copy(p[n:], w.body)
				w.body = w.body[k:]
				n += k
				if len(w.body) == 0 && w.done {
					w.release()
				}
			}
			return n, nil
		}
		var err error
		if w.inFrame {
			err = w.readPayload()
		} else {
			err = w.nextFrame()
		}
		if err != nil {
			return 0, err
		}
	}
}

// nextFrame reads a frame header: a control frame is read whole and queued
// scrubbed; a data frame starts (or continues) the message.
func (w *wsScrubber) nextFrame() error {
	h := w.hdr[:2]
	if _, err := io.ReadFull(w.br, h); err != nil {
		return err // io.EOF between frames: the upstream closed cleanly
	}
	fin, op := h[0]&0x80 != 0, h[0]&0x0f
	if h[0]&0x70 != 0 || h[1]&0x80 != 0 {
		return errWSFrame
	}
	var n uint64
	switch l := h[1] & 0x7f; l {
	case 126:
		if _, err := io.ReadFull(w.br, w.hdr[2:4]); err != nil {
			return io.ErrUnexpectedEOF
		}
		n = uint64(binary.BigEndian.Uint16(w.hdr[2:4]))
	case 127:
		if _, err := io.ReadFull(w.br, w.hdr[2:10]); err != nil {
			return io.ErrUnexpectedEOF
		}
		n = binary.BigEndian.Uint64(w.hdr[2:10])
		if n>>63 != 0 {
			return errWSFrame
		}
	default:
		n = uint64(l)
	}
	switch {
	case op >= 0x8 && op <= 0xa: // close, ping, pong
		if !fin || n > 125 {
			return errWSFrame
		}
		b := w.ctl[:n]
		if _, err := io.ReadFull(w.br, b); err != nil {
			return io.ErrUnexpectedEOF
		}
		w.s.Redact(b)
		h[1] = byte(n) // the short length form, whichever form it came in
		w.hdrOut, w.body = h, b
	case op == 0x0: // continuation
		if !w.inMsg {
			return errWSFrame
		}
		w.inFrame, w.fin, w.left = true, fin, int64(n)
	case op == 0x1 || op == 0x2: // text, binary
		if w.inMsg {
			return errWSFrame
		}
		w.inMsg, w.msgOp, w.sentAny = true, op, false
		w.inFrame, w.fin, w.left = true, fin, int64(n)
	default:
		return errWSFrame
	}
	return nil
}

// readPayload reads the next part of the current data frame into the
// message's window, scrubs it (scrub.Window), and queues what is safe to
// send: all of it at the message's end, else all but the bytes that could
// begin a value.
func (w *wsScrubber) readPayload() error {
	if w.pend == nil {
		w.pend = wsBufs.Get().(*[]byte)
	}
	pend := *w.pend
	if w.sent > 0 { // the last body went out: keep only the held tail
		pend = pend[:copy(pend, pend[w.sent:])]
		w.sent = 0
	}
	k := int(min(w.left, wsChunk))
	if cap(pend)-len(pend) < k {
		pend = append(pend, make([]byte, k)...)[:len(pend)]
	}
	if _, err := io.ReadFull(w.br, pend[len(pend):len(pend)+k]); err != nil {
		*w.pend = pend
		return io.ErrUnexpectedEOF
	}
	pend = pend[:len(pend)+k]
	w.left -= int64(k)
	*w.pend = pend
	final := w.left == 0 && w.fin
	if w.left == 0 {
		w.inFrame = false
	}
	safe, pending := w.s.Window(pend, final, w.pending)
	w.pending = pending
	if final {
		w.inMsg, w.pending = false, 0
	}
	return w.emit(safe, final)
}

// emit queues pend[:n] as the message's next frame (final: with FIN, even
// when empty). Nothing is queued for an empty non-final part.
func (w *wsScrubber) emit(n int, final bool) error {
	if n == 0 && !final {
		return nil
	}
	op := w.msgOp
	if w.sentAny {
		op = 0x0
	}
	w.sentAny = true
	h := w.hdr[:2]
	h[0] = op
	if final {
		h[0] |= 0x80
	}
	switch {
	case n < 126:
		h[1] = byte(n)
	case n <= 0xffff:
		h[1] = 126
		h = w.hdr[:4]
		binary.BigEndian.PutUint16(h[2:], uint16(n))
	default:
		h[1] = 127
		h = w.hdr[:10]
		binary.BigEndian.PutUint64(h[2:], uint64(n))
	}
	w.hdrOut = h
	w.body = (*w.pend)[:n]
	w.sent = n
	if final {
		w.done = true
		if n == 0 {
			w.release()
		}
	}
	return nil
}

// release gives the window back between messages, so a quiet connection
// holds none.
func (w *wsScrubber) release() {
	*w.pend = (*w.pend)[:0]
	wsBufs.Put(w.pend)
	w.pend, w.sent, w.done = nil, 0, false
}
