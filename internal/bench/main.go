// Command bench is `make bench` and `make bench-quick`: a load driver that
// starts a local TLS upstream and the real agent-vault binary (configured as
// a user would: a vault, a credential, a service, an agent, audit on), then
// measures each case against direct access to the same upstream in the same
// run, interleaving the two, and prints one line per case:
//
//	BENCH case=<name> broker=<value> direct=<value> unit=<unit> ratio=<broker/direct>
//
// The machines are shared and noisy: only ratios within one run mean
// anything, and nothing here is ever a pass/fail threshold. Each run's
// results also go to a JSON file; -compare OLD.json,NEW.json reads two of
// them and prints the change per case instead of running (compare.go).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/agentvault/agent-vault/internal/harness"
	"github.com/agentvault/agent-vault/store"
)

const apiHost = "api.bench.test"

type result struct {
	Case   string  `json:"case"`
	Broker float64 `json:"broker"`
	Direct float64 `json:"direct,omitempty"`
	Unit   string  `json:"unit"`
	Ratio  float64 `json:"ratio,omitempty"`
}

func main() {
	if len(os.Args) == 4 && os.Args[1] == upstreamChildFlag {
		runUpstreamChild(os.Args[2], os.Args[3])
	}
	if len(os.Args) == 6 && os.Args[1] == minimalChildFlag {
		runMinimalChild(os.Args[2], os.Args[3], os.Args[4], os.Args[5])
	}
	bin := flag.String("bin", "bin/agent-vault", "the agent-vault binary")
	quick := flag.Bool("quick", false, "shorter runs (≤ 60 s in all)")
	only := flag.String("only", "", "comma-separated cases to run (default all)")
	out := flag.String("out", "bench-results", "directory for the JSON results")
	prof := flag.String("perf", "", "directory: record the broker with perf(1) during one extra broker-only round per load case")
	events := flag.String("perf-stat", "", "perf events to count per request in one extra broker-only round per load case (e.g. syscalls:sys_enter_fdatasync)")
	cpuprof := flag.String("cpuprofile", "", "write this driver's own CPU profile (clients, upstream) to a file")
	reference := flag.Bool("reference", false, "also measure a minimal Go MITM (no policy, audit, injection or scrubbing) in the broker's place: cases ref_minimal_*")
	compare := flag.String("compare", "", "OLD.json,NEW.json: compare two result files case by case instead of running")
	flag.Parse()
	if *compare != "" {
		paths := strings.Split(*compare, ",")
		if len(paths) != 2 {
			fmt.Fprintln(os.Stderr, "bench: -compare wants two result files: OLD.json,NEW.json")
			os.Exit(2)
		}
		if err := compareRuns(os.Stdout, paths[0], paths[1]); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if *cpuprof != "" {
		f, err := os.Create(*cpuprof)
		if err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	if err := run(*bin, *quick, *reference, *only, *out, &profiler{dir: *prof, events: *events}); err != nil {
		fmt.Fprintln(os.Stderr, "bench failed:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func run(bin string, quick, reference bool, only, outDir string, prof *profiler) error {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "agent-vault-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	env, err := startEnv(bin, dir)
	if err != nil {
		return err
	}
	defer env.close()
	prof.pid = env.srv.Pid()
	env.prof = prof

	round := 2 * time.Second
	rounds := 3
	if quick {
		round, rounds = 1*time.Second, 2
	}
	want := func(name string) bool {
		return only == "" || strings.Contains(","+only+",", ","+name+",")
	}
	var results []result
	emit := func(r result) {
		if r.Direct > 0 {
			r.Ratio = r.Broker / r.Direct
			fmt.Printf("BENCH case=%s broker=%.4g direct=%.4g unit=%s ratio=%.3f\n", r.Case, r.Broker, r.Direct, r.Unit, r.Ratio)
		} else {
			fmt.Printf("BENCH case=%s broker=%.4g unit=%s\n", r.Case, r.Broker, r.Unit)
		}
		results = append(results, r)
	}
	for _, c := range []struct {
		name  string
		conc  int
		h2    bool
		fresh bool
	}{
		{"small_c1", 1, false, false},
		{"small_c16", 16, false, false},
		{"small_c64", 64, false, false},
		{"small_c16_h2", 16, true, false},
		{"newconn_c16", 16, false, true},
	} {
		if !want(c.name) {
			continue
		}
		b, d, bcpu, dcpu, err := env.compareSmall(c.name, routeBroker, c.conc, c.h2, c.fresh, round, rounds)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		emit(result{Case: c.name, Broker: b.rps(), Direct: d.rps(), Unit: "req/s"})
		if b.n > 0 && d.n > 0 && bcpu.broker > 0 {
			// CPU per request: the broker process alone, and this process
			// (clients + upstream) on each route
			emit(result{Case: c.name + "_broker_cpu", Broker: us(bcpu.broker) / float64(b.n), Unit: "us/req"})
			emit(result{Case: c.name + "_driver_cpu", Broker: us(bcpu.driver()) / float64(b.n), Direct: us(dcpu.driver()) / float64(d.n), Unit: "us/req"})
		}
		if !c.fresh {
			emit(result{Case: c.name + "_p50", Broker: ms(b.quantile(0.50)), Direct: ms(d.quantile(0.50)), Unit: "ms"})
			emit(result{Case: c.name + "_p99", Broker: ms(b.quantile(0.99)), Direct: ms(d.quantile(0.99)), Unit: "ms"})
		}
	}
	if reference {
		m, err := startMinimal(dir, filepath.Join(dir, "upstream-ca.pem"), env.up.Addr)
		if err != nil {
			return err
		}
		env.minimal = m
		defer m.Close()
		for _, c := range []struct {
			name string
			conc int
		}{{"ref_minimal_c1", 1}, {"ref_minimal_c16", 16}, {"ref_minimal_c64", 64}} {
			if !want(c.name) {
				continue
			}
			b, d, _, _, err := env.compareSmall(c.name, routeMinimal, c.conc, false, false, round, rounds)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			emit(result{Case: c.name, Broker: b.rps(), Direct: d.rps(), Unit: "req/s"})
		}
		if want("ref_minimal_stream_64MiB") {
			b, d, _, _, err := env.compareStream(routeMinimal, download)
			if err != nil {
				return fmt.Errorf("ref_minimal_stream_64MiB: %w", err)
			}
			emit(result{Case: "ref_minimal_stream_64MiB", Broker: b, Direct: d, Unit: "MiB/s"})
		}
	}
	if want("stream_64MiB") {
		b, d, bcpu, dcpu, err := env.compareStream(routeBroker, download)
		if err != nil {
			return fmt.Errorf("stream_64MiB: %w", err)
		}
		emit(result{Case: "stream_64MiB", Broker: b, Direct: d, Unit: "MiB/s"})
		// CPU per MiB downloaded, by process
		emit(result{Case: "stream_64MiB_broker_cpu", Broker: perMiB(bcpu.broker), Unit: "ms/MiB"})
		emit(result{Case: "stream_64MiB_client_cpu", Broker: perMiB(bcpu.client), Direct: perMiB(dcpu.client), Unit: "ms/MiB"})
		emit(result{Case: "stream_64MiB_upstream_cpu", Broker: perMiB(bcpu.upstream), Direct: perMiB(dcpu.upstream), Unit: "ms/MiB"})
	}
	for _, c := range []struct {
		name string
		kind transfer
	}{{"upload_64MiB", upload}, {"upload_chunked_64MiB", uploadChunked}} {
		if !want(c.name) {
			continue
		}
		b, d, bcpu, _, err := env.compareStream(routeBroker, c.kind)
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
		emit(result{Case: c.name, Broker: b, Direct: d, Unit: "MiB/s"})
		emit(result{Case: c.name + "_broker_cpu", Broker: perMiB(bcpu.broker), Unit: "ms/MiB"})
	}
	if want("audit_events_per_s") {
		d := 3 * time.Second
		if quick {
			d = 1500 * time.Millisecond
		}
		eps, err := auditThroughput(filepath.Join(dir, "audit-bench"), store.AuditSyncAlways, 64, d)
		if err != nil {
			return fmt.Errorf("audit_events_per_s: %w", err)
		}
		emit(result{Case: "audit_events_per_s", Broker: eps, Unit: "events/s"})
		// the default mode: each append returns once journaled
		eps, err = auditThroughput(filepath.Join(dir, "audit-bench-batch"), store.AuditSyncBatch, 64, d)
		if err != nil {
			return fmt.Errorf("audit_events_per_s_batch: %w", err)
		}
		emit(result{Case: "audit_events_per_s_batch", Broker: eps, Unit: "events/s"})
	}
	if want("idle_conns_10k") {
		n := 10000
		mib, err := env.idleConns(n)
		if err != nil {
			return fmt.Errorf("idle_conns_10k: %w", err)
		}
		emit(result{Case: "idle_conns_10k", Broker: mib, Unit: "MiB"})
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	file := filepath.Join(outDir, time.Now().UTC().Format("20060102T150405Z")+".json")
	doc := map[string]any{"time": time.Now().UTC(), "quick": quick, "go": runtime.Version(), "cpus": runtime.NumCPU(), "results": results}
	data, _ := json.MarshalIndent(doc, "", "  ")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return err
	}
	fmt.Println("results written to", file)
	return nil
}

// streamPairs is how many download pairs a transfer case averages, in quick
// runs too (they cost about 2.5 s more than 12 pairs did). A 64 MiB
// download takes 35-120 ms, and single downloads on either route swing by a
// third (where the scheduler puts three busy processes on two vCPUs): runs
// of the stream case alone, one build, read mean 0.487 with a standard
// deviation of 0.030 over 6 runs of 12 pairs, and 0.019 over 19 of 20.
const streamPairs = 20

// transferSize is what each transfer case's downloads and uploads move.
const transferSize = 64 << 20

// perMiB is CPU time per MiB moved by a transfer case's timed pairs, in
// milliseconds (USER_HZ granularity: 10 ms over the whole case).
func perMiB(t time.Duration) float64 { return ms(t) / float64(streamPairs*(transferSize>>20)) }

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// env is the running broker and upstream.
type env struct {
	srv      *harness.Server
	up       *childProc
	minimal  *minimalProc // with -reference
	dns      *harness.DNSServer
	ca       *harness.TestCA
	token    string
	brokerCA []byte
	port     string
	prof     *profiler
}

func startEnv(bin, dir string) (*env, error) {
	ca, err := harness.NewTestCA()
	if err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, "upstream-ca.pem")
	if err := ca.WritePEM(caFile); err != nil {
		return nil, err
	}
	up, err := startUpstream(ca, dir, apiHost)
	if err != nil {
		return nil, err
	}
	_, port, _ := strings.Cut(up.Addr, ":")
	d, err := harness.StartDNS("127.0.0.1:0", map[string][]netip.Addr{apiHost: {netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		up.Close()
		return nil, err
	}
	srv, err := harness.NewServer(bin, dir)
	if err != nil {
		up.Close()
		d.Close()
		return nil, err
	}
	srv.LogFile = filepath.Join(dir, "server.log") // as `server -d` writes it
	srv.Args = []string{"--insecure-no-master-password", "--upstream-dns", d.Addr, "--upstream-ca", caFile,
		"--allow-private-upstreams", "--log-format", "json"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		return nil, err
	}
	e := &env{srv: srv, up: up, dns: d, ca: ca, port: port}
	for _, c := range []struct {
		stdin string
		args  []string
	}{
		{"bench-password-1\n", []string{"setup", "--email", "bench@bench.test"}},
		{"", []string{"vault", "create", "bench"}},
		{"sk-bench-0123456789abcdef\n", []string{"credential", "set", "--vault", "bench", "API_KEY"}},
		{"", []string{"service", "add", "--vault", "bench", "--name", "api", "--host", apiHost, "--auth", "bearer", "--credential", "API_KEY"}},
	} {
		if _, err := srv.MustCLI(c.stdin, c.args...); err != nil {
			e.close()
			return nil, err
		}
	}
	var agent struct{ Token string }
	if err := srv.CLIJSON(&agent, "", "agent", "create", "--vault", "bench", "bench-agent"); err != nil {
		e.close()
		return nil, err
	}
	e.token = agent.Token
	pem, err := srv.MustCLI("", "ca", "export")
	if err != nil {
		e.close()
		return nil, err
	}
	e.brokerCA = []byte(pem)
	return e, nil
}

func (e *env) close() {
	e.srv.Stop()
	e.up.Close()
	e.dns.Close()
}
