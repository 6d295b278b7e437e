package mitm

// WebSocket framing (RFC 6455 section 5.2) for the tests: the frames an
// upstream sends and an agent reads.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// WebSocket opcodes the tests use.
const (
	wsText   = 0x1
	wsBinary = 0x2
	wsClose  = 0x8
	wsPing   = 0x9
	wsPong   = 0xa
)

// wsWriteFrame writes one frame (RFC 6455 section 5.2); clients mask.
func wsWriteFrame(w io.Writer, fin bool, opcode byte, payload []byte, mask bool) error {
	h := []byte{opcode, 0}
	if fin {
		h[0] |= 0x80
	}
	switch n := len(payload); {
	case n < 126:
		h[1] = byte(n)
	case n <= 0xffff:
		h[1] = 126
		h = binary.BigEndian.AppendUint16(h, uint16(n))
	default:
		h[1] = 127
		h = binary.BigEndian.AppendUint64(h, uint64(n))
	}
	body := payload
	if mask {
		h[1] |= 0x80
		key := []byte{0x12, 0x34, 0x56, 0x78}
		h = append(h, key...)
		body = make([]byte, len(payload))
		for i, b := range payload {
			body[i] = b ^ key[i%4]
		}
	}
	if _, err := w.Write(h); err != nil {
		return err
	}
	_, err := w.Write(body)
	return err
}

// wsReadFrame reads one frame and returns its FIN bit, opcode and unmasked
// payload.
func wsReadFrame(r io.Reader) (fin bool, op byte, payload []byte, err error) {
	h := make([]byte, 2)
	if _, err := io.ReadFull(r, h); err != nil {
		return false, 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		b := make([]byte, 2)
		if _, err := io.ReadFull(r, b); err != nil {
			return false, 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b))
	case 127:
		b := make([]byte, 8)
		if _, err := io.ReadFull(r, b); err != nil {
			return false, 0, nil, err
		}
		n = binary.BigEndian.Uint64(b)
	}
	var key []byte
	if h[1]&0x80 != 0 {
		key = make([]byte, 4)
		if _, err := io.ReadFull(r, key); err != nil {
			return false, 0, nil, err
		}
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return false, 0, nil, err
	}
	for i := range payload {
		if key != nil {
			payload[i] ^= key[i%4]
		}
	}
	return h[0]&0x80 != 0, h[0] & 0x0f, payload, nil
}

type wsMessage struct {
	op      byte
	payload []byte
}

// wsMessages parses a stream of server frames into messages as an agent's
// library delivers them: a control frame when it arrives, a data message
// when its last fragment arrives.
func wsMessages(b []byte) ([]wsMessage, error) {
	r := bytes.NewReader(b)
	var msgs []wsMessage
	var cur []byte
	op := -1
	for r.Len() > 0 {
		fin, fop, payload, err := wsReadFrame(r)
		if err != nil {
			return msgs, err
		}
		if fop >= 0x8 {
			msgs = append(msgs, wsMessage{fop, payload})
			continue
		}
		if (op < 0) != (fop != 0) {
			return msgs, fmt.Errorf("opcode %d out of order", fop)
		}
		if op < 0 {
			op = int(fop)
		}
		cur = append(cur, payload...)
		if fin {
			msgs = append(msgs, wsMessage{byte(op), cur})
			cur, op = nil, -1
		}
	}
	if op >= 0 {
		return msgs, errors.New("the last message has no final fragment")
	}
	return msgs, nil
}
