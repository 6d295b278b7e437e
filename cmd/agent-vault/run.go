package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/agentvault/agent-vault/admin"
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
	if cfg.Insecure {
		log.Warn("RUNNING WITHOUT A MASTER PASSWORD: CREDENTIALS ARE STORED UNENCRYPTED ON DISK. DEMO USE ONLY.")
	}
	if cfg.testKDF {
		log.Warn("AGENT_VAULT_TEST_KDF=fast: new stores and password hashes use test-only weak key derivation")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return withHint(fmt.Errorf("create data dir: %w", err), "check --data-dir and its permissions")
	}
	var stops stopStack
	defer func() {
		if serr := stops.stopAll(log); serr != nil && err == nil {
			err = serr
		}
		if err == nil {
			log.Info("agent-vault server stopped")
		}
	}()

	// 1. leftovers of a crashed run (the same code as --cleanup)
	if err := cleanupLeftovers(ctx, &cfg, log); err != nil {
		return err
	}

	// 2. open and unlock the store; its group-commit audit writer runs from
	// here until Close flushes it (step "audit writer" of the start order)
	st, err := openStore(cfg, log)
	if err != nil {
		return err
	}
	stops.push("store", func(context.Context) error { return st.Close() })
	if err := writePidFile(cfg.DataDir); err != nil {
		return err
	}
	stops.push("pid file", func(context.Context) error { return removeIfOurs(filepath.Join(cfg.DataDir, pidFile)) })

	// 3. CA
	// WIRING: load or create the root CA (mitm/ca, key in st.PutCA/st.CA) and
	// serve its PEM through caPEM.
	var caPEM func() ([]byte, error)

	// 4. policy snapshot
	// WIRING: build st.Snapshot() into an atomic.Pointer[policy.Snapshot] and
	// rebuild it on every st.Changed() signal (resolve agent cgroup ids).

	// 5. listeners: admin API first, then the data path
	var ready atomic.Bool
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
		Password: passwordParams(cfg),
	})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", cfg.AdminAddr)
	if err != nil {
		return withHint(fmt.Errorf("listen on admin address %s: %w", cfg.AdminAddr, err), "choose another --admin-addr")
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- adm.Serve(l) }()
	stops.push("admin API", adm.Shutdown)
	adminAddr := l.Addr().String()
	// WIRING: bind the explicit proxy (cfg.ProxyAddr), the transparent
	// listener (cfg.TransparentAddr) and the DNS proxy (cfg.DNSAddr) here,
	// each pushing its Shutdown onto stops.

	// 6. redirect rules, last: never redirect to a port nobody listens on
	// WIRING: install cfg.Redirect (gateway: cfg.GatewayIfaces; local:
	// cfg.AgentsCgroup) and push their removal, so they come off first.

	// 7. ready
	if err := writeFileAtomic(filepath.Join(cfg.DataDir, addrFile), []byte(adminAddr+"\n"), 0o600); err != nil {
		return err
	}
	stops.push("address file", func(context.Context) error { return os.Remove(filepath.Join(cfg.DataDir, addrFile)) })
	ready.Store(true)
	log.Info("agent-vault server ready", "admin_addr", adminAddr, "data_dir", cfg.DataDir,
		"redirect", cfg.Redirect, "pid", os.Getpid(), "version", version)
	if cfg.notifyReady != nil {
		cfg.notifyReady(adminAddr)
	}

	select {
	case <-ctx.Done():
		log.Info("agent-vault server stopping", "reason", context.Cause(ctx))
		return nil
	case err := <-serveErr:
		return fmt.Errorf("admin API stopped: %w", err)
	}
}

// openStore opens the store file and explains the ways it can fail.
func openStore(cfg serverConfig, log *slog.Logger) (*store.Store, error) {
	path := filepath.Join(cfg.DataDir, storeFile)
	opt := store.Options{Password: cfg.password, Insecure: cfg.Insecure, Logger: log}
	if cfg.testKDF {
		opt.KDF = testKDF
	}
	start := time.Now()
	st, err := store.Open(path, opt)
	clear(cfg.password)
	switch {
	case err == nil:
		log.Info("store unlocked", "path", path, "insecure", st.Insecure(), "took", time.Since(start).Round(time.Millisecond))
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
