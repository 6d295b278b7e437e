package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Seal sets ev.PrevHash to prev and ev.Hash to the row's hash, and returns
// the canonical JSON stored for the row. prev is "" for the first row.
func Seal(ev *Event, prev string) ([]byte, error) {
	ev.PrevHash = prev
	ev.Hash = ""
	body, ok := appendPlain(make([]byte, 0, 512), ev)
	if !ok {
		var err error
		if body, err = json.Marshal(ev); err != nil {
			return nil, fmt.Errorf("encode audit event: %w", err)
		}
	}
	ev.Hash = hashRow(prev, body)
	// Hash is the last field and was encoded empty: splice the hash in,
	// in place, rather than encoding the event a second time (this runs
	// for every brokered request).
	if !bytes.HasSuffix(body, emptyHashTail) {
		return nil, fmt.Errorf("encode audit event: the hash is not the last field")
	}
	out := append(body[:len(body)-len(emptyHashTail)], `"hash":"`...)
	out = append(out, ev.Hash...)
	return append(out, `"}`...), nil
}

var emptyHashTail = []byte(`"hash":""}`)

// appendPlain encodes ev exactly as json.Marshal does, without reflection,
// when every string in it is plain printable ASCII that JSON never escapes
// (no quote, backslash, <, > or &); otherwise it reports false and Seal
// uses json.Marshal. The hash is over these bytes, and the Verifier
// re-encodes with json.Marshal, so the two must agree byte for byte
// (TestAppendPlainMatchesMarshal).
func appendPlain(b []byte, ev *Event) ([]byte, bool) {
	if y := ev.Time.Year(); y < 0 || y > 9999 {
		return nil, false
	}
	for _, s := range [...]string{string(ev.Actor.Kind), ev.Actor.Name, ev.Vault, ev.Action, ev.Target, ev.Decision,
		ev.Reason, ev.Service, ev.Credential, ev.Method, ev.Host, ev.Path, ev.PrevHash, ev.Hash} {
		if !plain(s) {
			return nil, false
		}
	}
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, ev.Seq, 10)
	b = append(b, `,"time":"`...)
	b = ev.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","actor":{"kind":"`...)
	b = append(b, ev.Actor.Kind...)
	b = append(b, `","name":"`...)
	b = append(b, ev.Actor.Name...)
	b = append(b, `"}`...)
	b = field(b, "vault", ev.Vault, true)
	b = field(b, "action", ev.Action, false)
	b = field(b, "target", ev.Target, true)
	b = field(b, "decision", ev.Decision, true)
	b = field(b, "reason", ev.Reason, true)
	b = field(b, "service", ev.Service, true)
	b = field(b, "credential", ev.Credential, true)
	b = field(b, "method", ev.Method, true)
	b = field(b, "host", ev.Host, true)
	b = field(b, "path", ev.Path, true)
	b = intField(b, "status", int64(ev.Status))
	b = intField(b, "bytes", ev.Bytes)
	b = intField(b, "duration_ns", int64(ev.Duration))
	if ev.Ref != 0 {
		b = append(b, `,"ref":`...)
		b = strconv.AppendUint(b, ev.Ref, 10)
	}
	b = field(b, "prev_hash", ev.PrevHash, false)
	b = field(b, "hash", ev.Hash, false)
	return append(b, '}'), true
}

func field(b []byte, name, v string, omitEmpty bool) []byte {
	if omitEmpty && v == "" {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, `":"`...)
	b = append(b, v...)
	return append(b, '"')
}

// intField appends ,"name":v unless v is 0 (omitempty).
func intField(b []byte, name string, v int64) []byte {
	if v == 0 {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return strconv.AppendInt(b, v, 10)
}

// plain reports whether json.Marshal writes s unchanged between quotes.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

func hashRow(prev string, body []byte) string {
	h := sha256.New()
	h.Write([]byte(prev))
	h.Write([]byte{0})
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// BrokenError names the first row whose hash does not follow from the rows
// before it.
type BrokenError struct {
	Seq    uint64
	Reason string
}

func (e *BrokenError) Error() string {
	return fmt.Sprintf("audit chain broken at row %d: %s", e.Seq, e.Reason)
}

// Verifier checks rows in order, one at a time, so a log of any size is
// checked in constant memory. Start holds the hash the first checked row must
// chain from ("" for a log that starts at its first row, or the anchor a
// retention cut left behind).
type Verifier struct {
	prev    string
	lastSeq uint64
	started bool
	Rows    uint64
}

// NewVerifier returns a verifier expecting the first row to chain from prev.
func NewVerifier(prev string) *Verifier { return &Verifier{prev: prev} }

// Next checks one stored row (its raw JSON) and returns a *BrokenError if it
// does not follow.
func (v *Verifier) Next(raw []byte) error {
	var ev Event
	if err := json.Unmarshal(raw, &ev); err != nil {
		return &BrokenError{Seq: v.lastSeq + 1, Reason: "row is not valid JSON"}
	}
	if v.started && ev.Seq != v.lastSeq+1 {
		return &BrokenError{Seq: ev.Seq, Reason: fmt.Sprintf("expected row %d (a row is missing or reordered)", v.lastSeq+1)}
	}
	if ev.PrevHash != v.prev {
		return &BrokenError{Seq: ev.Seq, Reason: "prev_hash does not match the previous row's hash"}
	}
	want := ev.Hash
	ev.Hash = ""
	body, err := json.Marshal(&ev)
	if err != nil {
		return &BrokenError{Seq: ev.Seq, Reason: "row cannot be re-encoded"}
	}
	if hashRow(ev.PrevHash, body) != want {
		return &BrokenError{Seq: ev.Seq, Reason: "row content does not match its hash (altered)"}
	}
	v.prev, v.lastSeq, v.started = want, ev.Seq, true
	v.Rows++
	return nil
}

// Last returns the hash of the last row checked.
func (v *Verifier) Last() string { return v.prev }
