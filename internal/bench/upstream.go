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

// upstreamProc is the running upstream child.
type upstreamProc struct {
	Addr  string
	cmd   *exec.Cmd
	stdin io.Closer
}

// startUpstream issues the upstream's certificate from ca and starts the
// child that serves it.
func startUpstream(ca *harness.TestCA, dir, name string) (*upstreamProc, error) {
	cert, err := ca.Issue(name)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		return nil, err
	}
	certFile, keyFile := filepath.Join(dir, "upstream.pem"), filepath.Join(dir, "upstream.key")
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	if err := os.WriteFile(certFile, chain, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, upstreamChildFlag, certFile, keyFile)
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
		return nil, fmt.Errorf("start upstream: %w", err)
	}
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("upstream did not start: %w", err)
	}
	return &upstreamProc{Addr: strings.TrimSpace(addr), cmd: cmd, stdin: stdin}, nil
}

func (u *upstreamProc) Pid() int { return u.cmd.Process.Pid }

// Close stops the child and waits for it.
func (u *upstreamProc) Close() {
	u.stdin.Close()
	u.cmd.Wait()
}
