package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

func chain(t *testing.T, n int) [][]byte {
	t.Helper()
	var rows [][]byte
	prev := ""
	for i := 1; i <= n; i++ {
		ev := &Event{Seq: uint64(i), Time: time.Date(2026, 1, 2, 3, 4, 5, i, time.UTC), Actor: Actor{ActorAgent, "bot"},
			Vault: "v", Action: "request", Decision: DecisionAllow, Host: "api.example.com", Status: 200, Duration: time.Millisecond}
		raw, err := Seal(ev, prev)
		if err != nil {
			t.Fatal(err)
		}
		prev = ev.Hash
		rows = append(rows, raw)
	}
	return rows
}

func verify(rows [][]byte) error {
	v := NewVerifier("")
	for _, r := range rows {
		if err := v.Next(r); err != nil {
			return err
		}
	}
	return nil
}

func TestChainVerifies(t *testing.T) {
	if err := verify(chain(t, 10)); err != nil {
		t.Fatal(err)
	}
}

func TestChainDetectsTampering(t *testing.T) {
	cases := map[string]func(rows [][]byte) [][]byte{
		"altered field": func(r [][]byte) [][]byte {
			r[4] = bytes.Replace(r[4], []byte(`"status":200`), []byte(`"status":201`), 1)
			return r
		},
		"deleted row": func(r [][]byte) [][]byte { return append(r[:4:4], r[5:]...) },
		"swapped rows": func(r [][]byte) [][]byte {
			r[4], r[5] = r[5], r[4]
			return r
		},
		"garbage": func(r [][]byte) [][]byte {
			r[4] = []byte("{not json")
			return r
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			err := verify(mutate(chain(t, 10)))
			var be *BrokenError
			if !errors.As(err, &be) {
				t.Fatalf("tampering not detected: %v", err)
			}
			if be.Seq != 5 && be.Seq != 6 {
				t.Fatalf("broken row reported as %d, want 5 or 6", be.Seq)
			}
		})
	}
}

func TestVerifierAnchor(t *testing.T) {
	rows := chain(t, 6)
	v := NewVerifier("")
	for _, r := range rows[:3] {
		if err := v.Next(r); err != nil {
			t.Fatal(err)
		}
	}
	// A log cut at row 3 verifies from the anchor the cut left behind.
	w := NewVerifier(v.Last())
	for _, r := range rows[3:] {
		if err := w.Next(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := NewVerifier("").Next(rows[3]); err == nil {
		t.Fatal("a cut log verified without its anchor")
	}
}

// Seal's spliced encoding is exactly what encoding the sealed event gives.
func TestSealEncodingMatchesMarshal(t *testing.T) {
	ev := &Event{Seq: 7, Time: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), Actor: Actor{ActorUser, `o"wner`},
		Action: "request", Host: "api.example.com", Path: "/v1/</>", Duration: time.Second}
	raw, err := Seal(ev, "abc")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(ev)
	if !bytes.Equal(raw, want) {
		t.Fatalf("sealed row\n%s\nwant\n%s", raw, want)
	}
	if err := NewVerifier("abc").Next(raw); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkSeal(b *testing.B) {
	ev := &Event{Time: time.Now().UTC(), Actor: Actor{ActorAgent, "bot"}, Vault: "v", Action: "request",
		Decision: DecisionAllow, Service: "api", Credential: "API_KEY", Method: "POST", Host: "api.example.com", Path: "/v1/chat/completions"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Seal(ev, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"); err != nil {
			b.Fatal(err)
		}
	}
}
