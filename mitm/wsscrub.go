package mitm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"

	"github.com/agentvault/agent-vault/mitm/scrub"
)

// wsScrubber is the upstream side of an upgraded WebSocket connection whose
// upstream-to-agent frames are scrubbed: Read parses the upstream's frames
// (RFC 6455 section 5.2) and returns each header unchanged and each payload
// with every injected value redacted. Redaction keeps lengths, so the
// headers stay true. Writes (the agent's frames, masked, carrying nothing
// the agent was not given) pass through.
//
// What it cannot see, it refuses rather than relays: a masked or reserved
// bit set in an upstream frame (a compression extension: the broker strips
// the agent's Sec-WebSocket-Extensions offer, so none is negotiated) ends
// the connection. A value split across two frames is not found: each
// frame is scrubbed on its own, since holding a frame's tail back until
// the next frame arrives would stall a conversation.
type wsScrubber struct {
	io.ReadWriteCloser
	br      *bufio.Reader
	s       *scrub.Scrubber
	hdr     []byte        // header bytes not yet returned
	payload io.ReadCloser // the current frame's scrubbed payload
	lim     io.LimitedReader
	buf     [10]byte // the longest header an unmasked frame has
}

func newWSScrubber(rwc io.ReadWriteCloser, s *scrub.Scrubber) *wsScrubber {
	return &wsScrubber{ReadWriteCloser: rwc, br: bufio.NewReader(rwc), s: s}
}

var errWSFrame = errors.New("websocket: the upstream sent a frame the broker cannot scrub (masked, or an extension's reserved bits set)")

func (w *wsScrubber) Read(p []byte) (int, error) {
	for {
		if len(w.hdr) > 0 {
			n := copy(p, w.hdr)
			w.hdr = w.hdr[n:]
			return n, nil
		}
		if w.payload != nil {
			n, err := w.payload.Read(p)
			if err == io.EOF {
				w.payload = nil
				if w.lim.N > 0 { // the upstream left mid-frame
					err = io.ErrUnexpectedEOF
				} else {
					err = nil
				}
			}
			if n > 0 || err != nil {
				return n, err
			}
			continue
		}
		if err := w.nextFrame(); err != nil {
			return 0, err
		}
	}
}

// nextFrame reads a frame header into hdr and sets payload to the scrubbed
// payload that follows.
func (w *wsScrubber) nextFrame() error {
	h := w.buf[:2]
	if _, err := io.ReadFull(w.br, h); err != nil {
		return err // io.EOF between frames: the upstream closed cleanly
	}
	if h[0]&0x70 != 0 || h[1]&0x80 != 0 {
		return errWSFrame
	}
	var n uint64
	switch l := h[1] & 0x7f; l {
	case 126:
		h = w.buf[:4]
		if _, err := io.ReadFull(w.br, h[2:]); err != nil {
			return io.ErrUnexpectedEOF
		}
		n = uint64(binary.BigEndian.Uint16(h[2:]))
	case 127:
		h = w.buf[:10]
		if _, err := io.ReadFull(w.br, h[2:]); err != nil {
			return io.ErrUnexpectedEOF
		}
		n = binary.BigEndian.Uint64(h[2:])
		if n>>63 != 0 {
			return errWSFrame
		}
	default:
		n = uint64(l)
	}
	w.hdr = h
	if n > 0 {
		w.lim = io.LimitedReader{R: w.br, N: int64(n)}
		w.payload = w.s.Reader(io.NopCloser(&w.lim))
	}
	return nil
}
