package netns

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The topology forwards both families from the agent to the net namespace,
// and nothing of it remains after cleanup.
func TestTopologyForwardsAndCleansUp(t *testing.T) {
	RequirePrivileged(t, "ip", "nsenter")
	var names []string
	t.Run("build", func(t *testing.T) {
		topo := NewTopology(t)
		names = []string{topo.Agent.Name, topo.GW.Name, topo.Net.Name}
		for _, dst := range []string{"10.77.2.2:9000", "[fd77:2::2]:9000"} {
			var ln net.Listener
			if err := topo.Net.Do(func() (err error) {
				ln, err = net.Listen("tcp", dst)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			got := make(chan string, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					got <- err.Error()
					return
				}
				defer c.Close()
				b, _ := io.ReadAll(io.LimitReader(c, 64))
				got <- c.RemoteAddr().String() + " " + string(b)
			}()
			start := time.Now()
			if err := topo.Agent.Do(func() error {
				c, err := net.DialTimeout("tcp", dst, 5*time.Second)
				if err != nil {
					return err
				}
				_, err = c.Write([]byte("hi"))
				c.Close()
				return err
			}); err != nil {
				t.Fatalf("dial %s from agent: %v", dst, err)
			}
			t.Logf("%s took %v", dst, time.Since(start))
			select {
			case s := <-got:
				host, _, _ := net.SplitHostPort(s[:len(s)-3])
				if host != AgentV4.String() && host != AgentV6.String() || s[len(s)-2:] != "hi" {
					t.Errorf("net saw %q, want the agent's own address (no NAT) and \"hi\"", s)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no connection arrived")
			}
			ln.Close()
		}
	})
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(runDir, n)); !os.IsNotExist(err) {
			t.Errorf("namespace %s left behind (stat err %v)", n, err)
		}
	}
}

func TestStaleNames(t *testing.T) {
	if Stale("av-gw-" + "1" + "-abc") {
		// pid 1 always runs
		t.Error("pid 1 reported stale")
	}
	if Stale("other-name") || Stale("av-x") {
		t.Error("foreign name reported stale")
	}
	if !Stale("av-gw-999999999-abc") {
		t.Error("dead pid not reported stale")
	}
}
