package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
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

// appendPlain must produce json.Marshal's bytes exactly whenever it takes
// an event: the hash covers these bytes and the Verifier re-encodes with
// json.Marshal.
func TestAppendPlainMatchesMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	plainPieces := []string{"", "a", "api.example.com", "/v1/chat/completions", "GET", "allow", "agent-1",
		"x y", "~!@#$%^*()_+-=[]{}|;':,./?"}
	special := []string{"<", ">", "&", `"`, `\`, "\n", "\t", "\b", "\x00", "\x7f", "é", "\u2028", "\xff"}
	pick := func() string {
		s := plainPieces[r.IntN(len(plainPieces))] + plainPieces[r.IntN(len(plainPieces))]
		if r.IntN(40) == 0 {
			s += special[r.IntN(len(special))]
		}
		return s
	}
	plainSeen, fallbackSeen := 0, 0
	for range 20000 {
		ev := Event{
			Seq:   r.Uint64N(1 << 40),
			Time:  time.Unix(r.Int64N(4e9), r.Int64N(1e9)).UTC(),
			Actor: Actor{Kind: ActorKind(pick()), Name: pick()},
			Vault: pick(), Action: pick(), Target: pick(), Decision: pick(), Reason: pick(),
			Service: pick(), Credential: pick(), Method: pick(), Host: pick(), Path: pick(),
			PrevHash: pick(), Hash: pick(),
		}
		if r.IntN(2) == 0 {
			ev.Status, ev.Bytes, ev.Duration, ev.Ref = r.IntN(600), r.Int64N(1<<40)-1<<39, time.Duration(r.Int64N(1e12)), r.Uint64N(1<<30)
		}
		want, err := json.Marshal(&ev)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := appendPlain(nil, &ev)
		if !ok {
			fallbackSeen++
			continue
		}
		plainSeen++
		if !bytes.Equal(got, want) {
			t.Fatalf("appendPlain differs from json.Marshal:\n got %s\nwant %s", got, want)
		}
	}
	if plainSeen < 1000 || fallbackSeen < 1000 {
		t.Fatalf("cases not covered: %d plain, %d fallback", plainSeen, fallbackSeen)
	}
}
