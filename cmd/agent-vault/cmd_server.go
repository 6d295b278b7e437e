package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/agentvault/agent-vault/store"
)

// serverConfig is everything `agent-vault server` is told. Flags the data
// path will use are declared now so the wiring only has to read them.
type serverConfig struct {
	DataDir         string
	AdminAddr       string
	ProxyAddr       string          // explicit proxy (shape E); "" disables
	TransparentAddr string          // redirected TCP arrives here
	DNSAddr         string          // redirected DNS arrives here
	Redirect        string          // none, gateway or local
	GatewayIfaces   []string        // with --redirect gateway
	AgentsCgroup    string          // with --redirect local
	UpstreamDNS     string          // "" means the first nameserver of /etc/resolv.conf
	UpstreamCA      string          // PEM file of extra upstream roots
	AllowPrivate    bool            // --allow-private-upstreams
	Cleanup         bool            // remove leftovers and exit
	AuditRetention  string          // e.g. "90d"; "" keeps every row
	AuditSync       string          // batch or always (store.AuditSync)
	auditSync       store.AuditSync // AuditSync parsed by validate
	auditRetention  time.Duration   // AuditRetention parsed by validate
	AdminHosts      []string        // extra Host names the admin API and UI answer to

	MasterPasswordFile string
	Insecure           bool // --insecure-no-master-password
	LogFormat          string
	Detach             bool

	// hidden, for the detached child
	passwordFD int
	readyFD    int

	password []byte // resolved by resolvePassword; never logged
	testKDF  bool   // AGENT_VAULT_TEST_KDF=fast

	// notifyReady is called once everything is started, with the admin
	// listener's address (the detached child tells its parent; systemd
	// READY=1 goes here too).
	notifyReady func(adminAddr string)
}

// Files in the data dir.
const (
	storeFile = "agent-vault.db"
	pidFile   = "agent-vault.pid"
	logFile   = "agent-vault.log"
	addrFile  = "admin.addr" // the admin listener's bound address, while running
)

// defaultDataDir is /var/lib/agent-vault as root, else
// ~/.local/share/agent-vault.
func defaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/agent-vault"
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "agent-vault")
	}
	return ".agent-vault"
}

func (a *app) serverCmd() *cobra.Command {
	var cfg serverConfig
	cmd := &cobra.Command{
		Use:   "server [flags]",
		Short: "Run the appliance (foreground, or -d in the background)",
		Long: `Runs the appliance: opens and unlocks the store, serves the admin API and the
data path, and installs the traffic redirection last. Stops cleanly on SIGINT or
SIGTERM (redirect rules first, then listeners, then the audit log and the store).

The master password unlocks the store. It comes from --master-password-file,
else the AGENT_VAULT_MASTER_PASSWORD environment variable (the password itself),
else a no-echo prompt on a terminal. --insecure-no-master-password keeps the
store unencrypted, for demos only.

-d/--detach runs the server in the background with its pid and log in the data
dir (agent-vault.pid, agent-vault.log); 'agent-vault server stop' stops it. While
it runs, the admin listener's bound address is in admin.addr in the data dir
(useful with --admin-addr 127.0.0.1:0).`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.runServer(cmd, &cfg)
		},
	}
	f := cmd.Flags()
	dataDir := a.getenv("AGENT_VAULT_DATA_DIR")
	if dataDir == "" {
		dataDir = defaultDataDir()
	}
	cmd.PersistentFlags().StringVar(&cfg.DataDir, "data-dir", dataDir, "the store, pid, log and CA (env AGENT_VAULT_DATA_DIR)")
	f.StringVar(&cfg.AdminAddr, "admin-addr", "127.0.0.1:14321", "admin API + web UI listen address")
	f.StringSliceVar(&cfg.AdminHosts, "admin-allowed-host", nil, "a name the admin API and web UI answer to besides the listen address and localhost (repeatable; e.g. the appliance's DNS name behind a tunnel)")
	f.StringVar(&cfg.ProxyAddr, "proxy-addr", "127.0.0.1:14322", "explicit proxy (CONNECT and absolute-form); empty disables")
	f.StringVar(&cfg.TransparentAddr, "transparent-addr", ":14323", "where redirected TCP (TLS or plain HTTP) arrives")
	f.StringVar(&cfg.DNSAddr, "dns-addr", ":14353", "DNS proxy, where redirected DNS arrives")
	f.StringVar(&cfg.Redirect, "redirect", "none", "traffic capture: none, gateway (iptables) or local (eBPF cgroup hooks)")
	f.StringSliceVar(&cfg.GatewayIfaces, "gateway-iface", nil, "with --redirect gateway: interface(s) the agents' traffic arrives on (repeatable)")
	f.StringVar(&cfg.AgentsCgroup, "agents-cgroup", "agent-vault.agents", "with --redirect local: the agents' cgroup, under the cgroup2 mount")
	f.StringVar(&cfg.UpstreamDNS, "upstream-dns", "", "HOST[:PORT] of the upstream resolver (default: first nameserver of /etc/resolv.conf)")
	f.StringVar(&cfg.UpstreamCA, "upstream-ca", "", "PEM file of extra roots trusted for upstream TLS")
	f.BoolVar(&cfg.AllowPrivate, "allow-private-upstreams", false, "permit upstream IPs in private/loopback ranges")
	f.StringVar(&cfg.MasterPasswordFile, "master-password-file", "", "file holding the master password (env AGENT_VAULT_MASTER_PASSWORD holds the password itself)")
	f.BoolVar(&cfg.Insecure, "insecure-no-master-password", false, "DEMO ONLY: keep the store unencrypted, no master password")
	f.StringVar(&cfg.LogFormat, "log-format", "text", "log format: text or json")
	f.BoolVar(&cfg.Cleanup, "cleanup", false, "remove every rule, BPF link and pin a previous run left, then exit")
	f.StringVar(&cfg.AuditRetention, "audit-retention", "", "delete audit rows older than this (e.g. 90d, 720h); the deletion is itself audited and the chain stays verifiable; empty keeps everything")
	f.StringVar(&cfg.AuditSync, "audit-sync", "batch", "when a request's audit row counts as written before its credential is attached: batch (in the journal: survives a crash of the process; fsynced with the next group commit, within 10 ms) or always (wait for the fsync: survives power loss, costs the disk's flush time on every request)")
	f.BoolVarP(&cfg.Detach, "detach", "d", false, "run in the background (pid and log file in the data dir)")
	f.IntVar(&cfg.passwordFD, "master-password-fd", 0, "read the master password from this file descriptor")
	f.IntVar(&cfg.readyFD, "ready-fd", 0, "write the admin address to this file descriptor once ready")
	_ = f.MarkHidden("master-password-fd")
	_ = f.MarkHidden("ready-fd")
	cmd.AddCommand(a.serverStopCmd(&cfg))
	return cmd
}

func (cfg *serverConfig) validate() error {
	switch cfg.LogFormat {
	case "text", "json":
	default:
		return usagef("--log-format must be text or json, not %q", cfg.LogFormat)
	}
	switch cfg.Redirect {
	case "none", "gateway", "local":
	default:
		return usagef("--redirect must be none, gateway or local, not %q", cfg.Redirect)
	}
	if cfg.Redirect == "gateway" && len(cfg.GatewayIfaces) == 0 {
		return usagef("--redirect gateway needs --gateway-iface")
	}
	if cfg.DataDir == "" {
		return usagef("--data-dir must not be empty")
	}
	var err error
	if cfg.auditRetention, err = parseRetention(cfg.AuditRetention); err != nil {
		return usagef("--audit-retention: %v", err)
	}
	if cfg.auditSync, err = store.ParseAuditSync(cfg.AuditSync); err != nil {
		return usagef("--audit-sync must be batch or always, not %q", cfg.AuditSync)
	}
	if cfg.AdminAddr == "" {
		return usagef("--admin-addr must not be empty")
	}
	if cfg.Insecure && cfg.MasterPasswordFile != "" {
		return usagef("choose one of --master-password-file and --insecure-no-master-password")
	}
	return nil
}

// newLogger logs at Info and above to w, as text or JSON.
func newLogger(format string, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func (a *app) runServer(cmd *cobra.Command, cfg *serverConfig) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("data dir %s: %w", cfg.DataDir, err)
	}
	cfg.DataDir = abs
	cfg.testKDF = a.getenv("AGENT_VAULT_TEST_KDF") == "fast"
	if cfg.Cleanup {
		return cleanupLeftovers(cmd.Context(), cfg, newLogger(cfg.LogFormat, a.stderr))
	}
	if a.reexec != nil {
		a.reexec(cmd.Context(), newLogger(cfg.LogFormat, a.stderr)) // before the password is read (sysmon.go)
	}
	if err := a.resolvePassword(cfg); err != nil {
		return err
	}
	if cfg.Detach {
		return a.detach(cmd.Context(), cfg)
	}
	if cfg.readyFD > 0 {
		fd := cfg.readyFD
		cfg.notifyReady = func(addr string) {
			if f := os.NewFile(uintptr(fd), "ready"); f != nil {
				_, _ = f.WriteString(addr + "\n")
				f.Close()
			}
		}
	}
	buf := newLogBuffer(a.stderr)
	defer buf.Close()
	// the server's log lines go through buf (logbuf.go)
	log := slog.New(urgentHandler{newLogger(cfg.LogFormat, buf).Handler(), buf})
	return run(cmd.Context(), *cfg, log)
}

// resolvePassword finds the master password: --master-password-fd (the
// detached child), --master-password-file, AGENT_VAULT_MASTER_PASSWORD, or
// a prompt on a terminal (twice for a new store).
func (a *app) resolvePassword(cfg *serverConfig) error {
	if cfg.Insecure {
		return nil
	}
	switch {
	case cfg.passwordFD > 0:
		f := os.NewFile(uintptr(cfg.passwordFD), "master-password")
		if f == nil {
			return fmt.Errorf("read master password: bad descriptor %d", cfg.passwordFD)
		}
		b, err := io.ReadAll(io.LimitReader(f, maxSecretInput))
		f.Close()
		if err != nil {
			return fmt.Errorf("read master password from descriptor: %w", err)
		}
		cfg.password = b
	case cfg.MasterPasswordFile != "":
		b, err := os.ReadFile(cfg.MasterPasswordFile)
		if err != nil {
			return withHint(fmt.Errorf("read master password file: %w", err), "check --master-password-file")
		}
		cfg.password = bytes.TrimRight(b, "\r\n")
	case a.getenv("AGENT_VAULT_MASTER_PASSWORD") != "":
		cfg.password = []byte(a.getenv("AGENT_VAULT_MASTER_PASSWORD"))
		// children (the detached server, later agent-vault run) must not inherit it
		_ = os.Unsetenv("AGENT_VAULT_MASTER_PASSWORD")
	default:
		if _, ok := a.stdinTerminal(); !ok {
			return usagef("the store needs a master password: pass --master-password-file FILE, set AGENT_VAULT_MASTER_PASSWORD, run on a terminal to be asked, or (demo only) --insecure-no-master-password")
		}
		_, err := os.Stat(filepath.Join(cfg.DataDir, storeFile))
		isNew := errors.Is(err, fs.ErrNotExist)
		prompt := "master password"
		if isNew {
			prompt = "new master password for " + filepath.Join(cfg.DataDir, storeFile)
		}
		pw, err := a.readSecret(prompt, isNew)
		if err != nil {
			return err
		}
		cfg.password = pw
	}
	if len(cfg.password) == 0 {
		return withHint(errors.New("the master password is empty"), "put it in the file or variable, or type it at the prompt")
	}
	return nil
}
