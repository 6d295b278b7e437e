package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The test binary doubles as a Go client run as an agent (inside the
// agent's namespace and cgroup): with AV_HELPER set, init runs the helper
// and exits before any test starts.
//
//	AV_HELPER=dial ADDR...       dial each tcp or udp address concurrently;
//	                             prints "ADDR RESULT" per address
//	AV_HELPER=hold CAFILE NETWORK HOST PATH
//	                             one HTTPS request on a kept-alive
//	                             connection (NETWORK tcp, tcp4 or tcp6),
//	                             prints "status N", then "closed" when the
//	                             broker closes the connection, then the
//	                             status of a second request on a new
//	                             connection ("status N" or "error ...")
func init() {
	switch os.Getenv("AV_HELPER") {
	case "":
		return
	case "dial":
		capHelperDial(os.Args[1:])
	case "hold":
		if err := capHelperHold(os.Args[1:]); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown AV_HELPER")
		os.Exit(2)
	}
	os.Exit(0)
}

// capHelperCommand returns the test binary as a helper command line.
func capHelperCommand(helper string, args ...string) (name string, argv []string, env string) {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	return exe, args, "AV_HELPER=" + helper
}

// capDialResult classifies what a dial (and, for udp, one datagram and a
// read) ended in: connected, reply, refused, eperm, unreachable, timeout
// or "error: ...".
func capDialResult(network, addr string) string {
	c, err := net.DialTimeout(network, addr, 1500*time.Millisecond)
	if err == nil && strings.HasPrefix(network, "udp") {
		defer c.Close()
		c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
		if _, err = c.Write([]byte("\x00quic-ish probe")); err == nil {
			buf := make([]byte, 512)
			_, err = c.Read(buf)
			if err == nil {
				return "reply"
			}
		}
	} else if err == nil {
		c.Close()
		return "connected"
	}
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return "eperm"
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
		return "unreachable"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "error: " + err.Error()
}

func capHelperDial(targets []string) {
	out := make([]string, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		network, addr, _ := strings.Cut(t, "://")
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = t + " " + capDialResult(network, addr)
		}()
	}
	wg.Wait()
	for _, l := range out {
		fmt.Println(l)
	}
}

func capHelperHold(args []string) error {
	if len(args) != 4 {
		return errors.New("usage: CAFILE NETWORK HOST PATH")
	}
	pem, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	network, host, path := args[1], args[2], args[3]
	// Resolve once (through the broker's DNS, as any client would), so the
	// second connection goes to the same address even when the revoked
	// agent's DNS is refused. (The connection's RemoteAddr would not do: in
	// local mode it is the broker's rewritten address.)
	family := map[string]string{"tcp": "ip", "tcp4": "ip4", "tcp6": "ip6"}[network]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	ips, err := net.DefaultResolver.LookupNetIP(ctx, family, host)
	cancel()
	if err != nil || len(ips) == 0 {
		return fmt.Errorf("resolve %s: %v", host, err)
	}
	target := netip.AddrPortFrom(ips[0].Unmap(), 443).String()
	dial := func() (*tls.Conn, error) {
		d := &net.Dialer{Timeout: 5 * time.Second}
		return tls.DialWithDialer(d, network, target,
			&tls.Config{ServerName: host, RootCAs: roots, NextProtos: []string{"http/1.1"}})
	}
	get := func(c *tls.Conn, br *bufio.Reader) (int, error) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer placeholder\r\n\r\n", path, host)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		_, err = bufio.NewReader(resp.Body).WriteTo(capDevNull{})
		return resp.StatusCode, err
	}
	c, err := dial()
	if err != nil {
		return err
	}
	br := bufio.NewReader(c)
	code, err := get(c, br)
	if err != nil {
		return err
	}
	fmt.Printf("status %d\n", code)
	// Wait (bounded) for the broker to close the idle connection.
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := br.ReadByte(); err == nil {
		return errors.New("unexpected bytes on the idle connection")
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		return errors.New("the connection stayed open for 30 s")
	}
	fmt.Println("closed")
	c.Close()
	c2, err := dial()
	if err != nil {
		fmt.Println("error", err)
		return nil
	}
	defer c2.Close()
	code, err = get(c2, bufio.NewReader(c2))
	if err != nil {
		fmt.Println("error", err)
		return nil
	}
	fmt.Printf("status %d\n", code)
	return nil
}

type capDevNull struct{}

func (capDevNull) Write(p []byte) (int, error) { return len(p), nil }

// capAgentHelper starts the helper as the agent through start (the mode's
// command constructor) and returns the command, not yet started.
func capAgentHelper(ctx context.Context, start func(ctx context.Context, name string, args ...string) *exec.Cmd,
	helper string, args ...string) *exec.Cmd {
	name, argv, env := capHelperCommand(helper, args...)
	cmd := start(ctx, name, argv...)
	cmd.Env = append(cmd.Env, env)
	return cmd
}
