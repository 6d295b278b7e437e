package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
)

// runFile is what a run writes to bench-results/<time>.json.
type runFile struct {
	Quick   bool     `json:"quick"`
	Go      string   `json:"go"`
	CPUs    int      `json:"cpus"`
	Results []result `json:"results"`
}

func readRun(path string) (runFile, error) {
	var r runFile
	data, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("%s: not a bench result file: %w", path, err)
	}
	if len(r.Results) == 0 {
		return r, fmt.Errorf("%s: no results", path)
	}
	return r, nil
}

// compareRuns prints one line per case the two runs share, in the newer
// run's order:
//
//	COMPARE case=<name> old=<value> new=<value> change=<+x.x%> better=<yes|no|same>
//
// The value compared is the ratio where the case has one (each run's own
// direct baseline: absolute figures from different runs also measure how
// busy the shared machine was), the broker's figure otherwise. Higher is better
// for rates (units ending in /s), lower for everything else (latency,
// CPU per MiB, RSS). Changes within 1% read "same": even one run's ratios
// move by more than that.
func compareRuns(w io.Writer, oldPath, newPath string) error {
	older, err := readRun(oldPath)
	if err != nil {
		return err
	}
	newer, err := readRun(newPath)
	if err != nil {
		return err
	}
	if older.Quick != newer.Quick {
		fmt.Fprintln(w, "# note: one run is -quick and the other is not")
	}
	byCase := map[string]result{}
	for _, r := range older.Results {
		byCase[r.Case] = r
	}
	shared := 0
	for _, n := range newer.Results {
		o, ok := byCase[n.Case]
		if !ok || o.Unit != n.Unit {
			continue
		}
		ov, nv, what := o.Broker, n.Broker, n.Unit
		if o.Ratio != 0 && n.Ratio != 0 {
			ov, nv, what = o.Ratio, n.Ratio, "ratio"
		}
		if ov == 0 {
			continue
		}
		change := nv/ov - 1
		better := "same"
		if math.Abs(change) >= 0.01 {
			higherIsBetter := strings.HasSuffix(n.Unit, "/s")
			if (change > 0) == higherIsBetter {
				better = "yes"
			} else {
				better = "no"
			}
		}
		fmt.Fprintf(w, "COMPARE case=%s %s old=%.4g new=%.4g change=%+.1f%% better=%s\n", n.Case, what, ov, nv, 100*change, better)
		shared++
	}
	if shared == 0 {
		return fmt.Errorf("%s and %s share no case", oldPath, newPath)
	}
	return nil
}
