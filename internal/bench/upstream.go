package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/agentvault/agent-vault/internal/harness"
)

// The upstream runs in a process of its own, as a real API runs on another
// machine: client, broker and upstream are three processes, and neither
// route gets to hand a request from client to upstream inside one Go
// runtime. On these small VMs a wake-up across processes costs tens of
// microseconds (an IPI to an idle vCPU), while a goroutine hand-off inside
// one process costs a few; with the upstream inside the driver, the direct
// route skipped that cost entirely and the ratio measured the VM's
// scheduler more than the broker.

// upstreamChildFlag runs this binary as the upstream: it loads the
// certificate and key from the files named, listens on loopback, prints its
// address, and serves until its stdin closes (the driver went away).
const upstreamChildFlag = "-upstream-child"

// runUpstreamChild is the child's main.
func runUpstreamChild(certFile, keyFile string) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(1)
	}
	up, err := harness.StartUpstreamCert(cert, "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(1)
	}
	up.Record = false
	fmt.Println(up.Addr)
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// childProc is a child process of this binary (the upstream, or the
// reference proxy) that printed its address and serves until its stdin
// closes.
type childProc struct {
	Addr  string
	cmd   *exec.Cmd
	stdin io.Closer
}

// startUpstream issues the upstream's certificate from ca and starts the
// child that serves it.
func startUpstream(ca *harness.TestCA, dir, name string) (*childProc, error) {
	certFile, keyFile, err := issueToFiles(ca, dir, "upstream", name)
	if err != nil {
		return nil, err
	}
	return startChild(upstreamChildFlag, certFile, keyFile)
}

// issueToFiles issues a certificate for name from ca and writes it and its
// key as PEM files prefix.pem and prefix.key in dir.
func issueToFiles(ca *harness.TestCA, dir, prefix, name string) (certFile, keyFile string, err error) {
	cert, err := ca.Issue(name)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, prefix+".pem"), filepath.Join(dir, prefix+".key")
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	if err := os.WriteFile(certFile, chain, 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// startChild runs this binary with flag and args and reads the address it
// prints.
func startChild(flag string, args ...string) (*childProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{flag}, args...)...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", flag, err)
	}
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("%s did not start: %w", flag, err)
	}
	return &childProc{Addr: strings.TrimSpace(addr), cmd: cmd, stdin: stdin}, nil
}

func (u *childProc) Pid() int { return u.cmd.Process.Pid }

// Close stops the child and waits for it.
func (u *childProc) Close() {
	u.stdin.Close()
	u.cmd.Wait()
}
