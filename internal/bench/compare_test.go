package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeRun(t *testing.T, quick bool, results ...result) string {
	t.Helper()
	data, err := json.Marshal(map[string]any{"quick": quick, "go": "go1.26", "cpus": 2, "results": results})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "run.json")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCompareRuns(t *testing.T) {
	older := writeRun(t, true,
		result{Case: "small_c1", Broker: 3000, Direct: 9000, Unit: "req/s", Ratio: 0.333},
		result{Case: "small_c1_p50", Broker: 0.3, Direct: 0.1, Unit: "ms", Ratio: 3},
		result{Case: "stream_64MiB", Broker: 600, Direct: 1400, Unit: "MiB/s", Ratio: 0.43},
		result{Case: "stream_64MiB_broker_cpu", Broker: 1.3, Unit: "ms/MiB"},
		result{Case: "audit_events_per_s", Broker: 60000, Unit: "events/s"},
		result{Case: "gone", Broker: 1, Unit: "MiB"},
	)
	newer := writeRun(t, false,
		result{Case: "small_c1", Broker: 3900, Direct: 9000, Unit: "req/s", Ratio: 0.433},
		result{Case: "small_c1_p50", Broker: 0.24, Direct: 0.1, Unit: "ms", Ratio: 2.4},
		result{Case: "stream_64MiB", Broker: 640, Direct: 1480, Unit: "MiB/s", Ratio: 0.432},
		result{Case: "stream_64MiB_broker_cpu", Broker: 1.43, Unit: "ms/MiB"},
		result{Case: "audit_events_per_s", Broker: 54000, Unit: "events/s"},
		result{Case: "new_case", Broker: 1, Unit: "MiB"},
	)
	var out bytes.Buffer
	if err := compareRuns(&out, older, newer); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"# note: one run is -quick and the other is not",
		"COMPARE case=small_c1 ratio old=0.333 new=0.433 change=+30.0% better=yes",
		"COMPARE case=small_c1_p50 ratio old=3 new=2.4 change=-20.0% better=yes", // lower latency
		"COMPARE case=stream_64MiB ratio old=0.43 new=0.432 change=+0.5% better=same",
		"COMPARE case=stream_64MiB_broker_cpu ms/MiB old=1.3 new=1.43 change=+10.0% better=no",
		"COMPARE case=audit_events_per_s events/s old=6e+04 new=5.4e+04 change=-10.0% better=no",
	}
	if got := strings.Split(strings.TrimSpace(out.String()), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestCompareRunsBadInput(t *testing.T) {
	good := writeRun(t, true, result{Case: "small_c1", Broker: 1, Direct: 2, Unit: "req/s", Ratio: 0.5})
	other := writeRun(t, true, result{Case: "other", Broker: 1, Unit: "MiB"})
	garbage := filepath.Join(t.TempDir(), "garbage.json")
	os.WriteFile(garbage, []byte("BENCH case=small_c1"), 0o644)
	empty := writeRun(t, true)
	for name, c := range map[string]struct{ old, new, want string }{
		"missing file":   {filepath.Join(t.TempDir(), "none.json"), good, "no such file"},
		"not JSON":       {good, garbage, "not a bench result file"},
		"no results":     {empty, good, "no results"},
		"nothing shared": {good, other, "share no case"},
	} {
		var out bytes.Buffer
		err := compareRuns(&out, c.old, c.new)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one saying %q", name, err, c.want)
		}
	}
}
