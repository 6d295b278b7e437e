package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// Seal sets ev.PrevHash to prev and ev.Hash to the row's hash, and returns
// the canonical JSON stored for the row. prev is "" for the first row.
func Seal(ev *Event, prev string) ([]byte, error) {
	ev.PrevHash = prev
	ev.Hash = ""
	body, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode audit event: %w", err)
	}
	ev.Hash = hashRow(prev, body)
	// Hash is the last field and was encoded empty: splice the hash in
	// rather than encoding the event a second time (this runs for every
	// brokered request).
	if bytes.HasSuffix(body, emptyHashTail) {
		out := make([]byte, 0, len(body)+len(ev.Hash))
		out = append(out, body[:len(body)-len(emptyHashTail)]...)
		out = append(out, `"hash":"`...)
		out = append(out, ev.Hash...)
		return append(out, `"}`...), nil
	}
	return json.Marshal(ev)
}

var emptyHashTail = []byte(`"hash":""}`)

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
