package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/agentvault/agent-vault/admin"
	"github.com/agentvault/agent-vault/admin/api"
	"github.com/agentvault/agent-vault/policy"
	"github.com/agentvault/agent-vault/redirect"
	"github.com/agentvault/agent-vault/store"
)

// The store must satisfy what the admin API asks of it.
var _ admin.Store = (*store.Store)(nil)

// stopTimeout bounds each component's shutdown.
const stopTimeout = 10 * time.Second

// stopStack holds the stop functions of started components; run calls them
// in reverse start order, which is the stop order of ARCHITECTURE.md
// section 8 (redirect rules, listeners, audit flush, store).
type stopStack []struct {
	name string
	fn   func(context.Context) error
}

func (s *stopStack) push(name string, fn func(context.Context) error) {
	*s = append(*s, struct {
		name string
		fn   func(context.Context) error
	}{name, fn})
}

func (s stopStack) stopAll(log *slog.Logger) error {
	var errs []error
	for i := len(s) - 1; i >= 0; i-- {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		if err := s[i].fn(ctx); err != nil {
			log.Error("stop failed", "component", s[i].name, "err", err)
			errs = append(errs, fmt.Errorf("stop %s: %w", s[i].name, err))
		}
		cancel()
	}
	return errors.Join(errs...)
}

// run starts the appliance in the order of ARCHITECTURE.md section 8, blocks
// until ctx ends or a component fails, and stops everything in reverse.
func run(ctx context.Context, cfg serverConfig, log *slog.Logger) (err error) {
	tuneGC()
	if cfg.Insecure {
		log.Warn("RUNNING WITHOUT A MASTER PASSWORD: CREDENTIALS ARE STORED UNENCRYPTED ON DISK. DEMO USE ONLY.")
	}
	if cfg.testKDF {
		log.Warn("AGENT_VAULT_TEST_KDF=fast: new stores and password hashes use test-only weak key derivation")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return withHint(fmt.Errorf("create data dir: %w", err), "check --data-dir and its permissions")
	}
	keepCrashOutput(cfg.DataDir, log)
	var stops stopStack
	defer func() {
		if serr := stops.stopAll(log); serr != nil && err == nil {
			err = serr
		}
		if err == nil {
			log.Info("agent-vault server stopped")
		}
	}()

	// 1. leftovers of a crashed run: removed in step 6, right after this
	// run's rules are in place (CleanupExcept), so a restart never opens a
	// gap in which agents are not captured. See capture.go.

	// 2. open and unlock the store (replaying the audit journal); its
	// group-commit folder runs from here until Close commits what is left
	// (step "audit writer" of the start order)
	st, err := openStore(cfg, log)
	if err != nil {
		return err
	}
	stops.push("store", func(context.Context) error { return st.Close() })
	if err := writePidFile(cfg.DataDir); err != nil {
		return err
	}
	stops.push("pid file", func(context.Context) error { return removeIfOurs(filepath.Join(cfg.DataDir, pidFile)) })

	if cfg.auditRetention > 0 {
		pruneCtx, stopPrune := context.WithCancel(ctx)
		go pruneAudit(pruneCtx, st, cfg.auditRetention, log)
		stops.push("audit retention", func(context.Context) error { stopPrune(); return nil })
	}

	// 3. CA
	authority, err := loadCA(st, log)
	if err != nil {
		return err
	}
	caPEM := func() ([]byte, error) { return authority.CertPEM(), nil }

	// 4. policy snapshot (rebuilt on every change once the data path runs)
	cgroupMount, _ := redirect.Cgroup2Mount()
	snaps := &snapshotBuilder{st: st, cgroupMount: cgroupMount, log: log}
	snap, err := snaps.build()
	if err != nil {
		return err
	}
	roots, err := upstreamRoots(cfg.UpstreamCA)
	if err != nil {
		return err
	}
	resolver, err := upstreamDNS(cfg.UpstreamDNS)
	if err != nil {
		return err
	}

	// 5. listeners: admin API first, then the data path
	var ready atomic.Bool
	var described atomic.Pointer[api.Health] // the data path's addresses, once bound
	adm, err := admin.New(admin.Config{
		Store:   st,
		Logger:  log,
		CACert:  caPEM,
		Version: version,
		Ready: func() error {
			if !ready.Load() {
				return errors.New("starting")
			}
			return nil
		},
		Password:     passwordParams(cfg),
		AllowedHosts: cfg.AdminHosts,
		Describe: func(h *api.Health) {
			if d := described.Load(); d != nil {
				h.ProxyAddr, h.Redirect, h.AgentsCgroup = d.ProxyAddr, d.Redirect, d.AgentsCgroup
			}
		},
	})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		return withHint(fmt.Errorf("listen on admin address %s: %w", cfg.AdminAddr, err), "choose another --admin-addr")
	}
	serveErr := make(chan error, 8)
	serve(serveErr, "admin API", func() error { return adm.Serve(l) })
	stops.push("admin API", adm.Shutdown)
	adminAddr := l.Addr().String()
	dp, err := bindDataPath(&cfg)
	if err != nil {
		return err
	}
	capture := &capture{log: log}
	var current atomic.Pointer[policy.Snapshot]
	current.Store(snap)
	dns, err := newDNSProxy(&cfg, resolver, log, st, capture.identifyDNS(current.Load), capture.identifyDNSConn(current.Load))
	if err != nil {
		dp.close()
		return err
	}
	broker, err := newBroker(&cfg, authority, st, roots, resolver, capture.origin, dns, dp.selfAddrs(l.Addr()), log)
	if err != nil {
		dp.close()
		return err
	}
	apply := func(s *policy.Snapshot) {
		current.Store(s)
		broker.SetPolicy(s)
		dns.SetPolicy(s)
	}
	apply(snap)
	// Every change is in force in the data path before the admin API
	// answers: the store runs this after each policy-relevant commit.
	st.SetOnPolicyChange(func() { snaps.rebuild(apply) })
	stops.push("policy hook", func(context.Context) error { st.SetOnPolicyChange(nil); return nil })
	serve(serveErr, "transparent listener", func() error { return broker.ServeTransparent(dp.transparent) })
	if dp.proxy != nil {
		serve(serveErr, "explicit proxy", func() error { return broker.ServeProxy(dp.proxy) })
	}
	stops.push("broker", broker.Shutdown)
	serve(serveErr, "DNS proxy (udp)", func() error { return dns.ServeUDP(dp.dnsUDP) })
	serve(serveErr, "DNS proxy (tcp)", func() error { return dns.ServeTCP(dp.dnsTCP) })
	stops.push("DNS proxy", dns.Shutdown)

	// 6. redirect rules, last: never redirect to a port nobody listens on.
	// They stay in place at stop (fail closed); --cleanup removes them.
	if err := capture.install(&cfg, dp, l.Addr()); err != nil {
		return err
	}
	stops.push("capture", capture.stop)
	described.Store(&api.Health{ProxyAddr: addrString(dp.proxy), Redirect: cfg.Redirect, AgentsCgroup: capture.agentsCgroup})

	// 7. ready
	if err := writeFileAtomic(filepath.Join(cfg.DataDir, addrFile), []byte(adminAddr+"\n"), 0o600); err != nil {
		return err
	}
	stops.push("address file", func(context.Context) error { return os.Remove(filepath.Join(cfg.DataDir, addrFile)) })
	ready.Store(true)
	log.Info("agent-vault server ready", "admin_addr", adminAddr, "data_dir", cfg.DataDir,
		"proxy_addr", addrString(dp.proxy), "transparent_addr", dp.transparent.Addr().String(),
		"dns_addr", dp.dnsUDP.LocalAddr().String(), "redirect", cfg.Redirect, "pid", os.Getpid(), "version", version)
	if cfg.notifyReady != nil {
		cfg.notifyReady(adminAddr)
	}

	select {
	case <-ctx.Done():
		log.Info("agent-vault server stopping", "reason", context.Cause(ctx))
		return nil
	case err := <-serveErr:
		return fmt.Errorf("a listener stopped: %w", err)
	}
}

// openStore opens the store file and explains the ways it can fail.
func openStore(cfg serverConfig, log *slog.Logger) (*store.Store, error) {
	path := filepath.Join(cfg.DataDir, storeFile)
	opt := store.Options{Password: cfg.password, Insecure: cfg.Insecure, Logger: log, AuditSync: cfg.auditSync}
	if cfg.testKDF {
		opt.KDF = testKDF
	}
	start := time.Now()
	st, err := store.Open(path, opt)
	clear(cfg.password)
	switch {
	case err == nil:
		log.Info("store unlocked", "path", path, "insecure", st.Insecure(), "audit_sync", cfg.auditSync.String(), "took", time.Since(start).Round(time.Millisecond))
		return st, nil
	case errors.Is(err, store.ErrWrongPassword):
		return nil, withHint(fmt.Errorf("wrong master password for %s (nothing was changed)", path),
			"give the right one with --master-password-file or AGENT_VAULT_MASTER_PASSWORD")
	case errors.Is(err, store.ErrLocked):
		return nil, withHint(fmt.Errorf("the store %s is locked by another agent-vault server", path),
			"stop it with 'agent-vault server stop --data-dir "+cfg.DataDir+"', or use another --data-dir")
	case errors.Is(err, store.ErrPasswordRequired):
		return nil, withHint(fmt.Errorf("the store %s is encrypted and needs its master password", path),
			"give it with --master-password-file or AGENT_VAULT_MASTER_PASSWORD (not --insecure-no-master-password)")
	case errors.Is(err, store.ErrPasswordless):
		return nil, withHint(fmt.Errorf("the store %s was created without a master password", path),
			"start it with --insecure-no-master-password (it is a demo store)")
	case errors.Is(err, store.ErrNewerSchema):
		return nil, withHint(fmt.Errorf("the store %s was written by a newer agent-vault", path),
			"run that newer version")
	}
	return nil, fmt.Errorf("open store: %w", err)
}

// AGENT_VAULT_TEST_KDF=fast (honoured only when set to exactly "fast")
// makes new stores and new password hashes cheap, so end-to-end tests do
// not spend a second and 256 MiB per start. The server says so in its log.
var testKDF = store.KDFParams{MemoryKiB: 64, Time: 1, Threads: 1}

func passwordParams(cfg serverConfig) admin.PasswordParams {
	if cfg.testKDF {
		return admin.PasswordParams{MemoryKiB: 64, Time: 1, Threads: 1}
	}
	return admin.DefaultPasswordParams
}

func writePidFile(dataDir string) error {
	return writeFileAtomic(filepath.Join(dataDir, pidFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
}

// removeIfOurs removes the pid file if it still names this process.
func removeIfOurs(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	if pid, _ := strconv.Atoi(string(trimNL(b))); pid == os.Getpid() {
		return os.Remove(path)
	}
	return nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// serve runs fn in a goroutine and reports an unexpected end on errs (a
// clean shutdown is not reported).
func serve(errs chan<- error, name string, fn func() error) {
	go func() {
		if err := ignoreClosed(fn()); err != nil {
			errs <- fmt.Errorf("%s: %w", name, err)
		}
	}()
}

// tuneGC trades memory for CPU on the request path: the broker allocates a
// little per request, and a GC target of 400% instead of 100% measured 10-15%
// less CPU per brokered request. A soft memory limit of 1 GiB keeps the heap
// from running away with many idle connections. GOGC and GOMEMLIMIT, when
// set, win.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(1 << 30)
	}
}
