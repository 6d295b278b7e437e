package e2e

import (
	"bufio"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/internal/harness"
	"github.com/agentvault/agent-vault/internal/testutil/appliance"
)

// rig is what the DNS and bypass tests need of a running appliance, gateway
// or local mode.
type rig struct {
	run           func(timeout time.Duration, name string, args ...string) (string, int) // as the agent
	srv           *harness.Server
	canary        *appliance.Canary
	dns           *harness.DNSServer
	received      func() []harness.Received
	caFile        string
	setResolvConf func(t testing.TB, content string) (restore func())
	agentDo       func(fn func() error) error // Go code in the agent's namespace (gateway only)
}

func gatewayRig(g *appliance.Gateway) *rig {
	return &rig{run: g.Run, srv: g.Srv, canary: g.Canary, dns: g.DNS, received: g.Received, caFile: g.BrokerCAFile,
		setResolvConf: g.SetAgentResolvConf, agentDo: g.Topo.Agent.Do}
}

func localRig(l *appliance.Local) *rig {
	return &rig{run: l.Run, srv: l.Srv, canary: l.Canary, dns: l.DNS, received: l.Received, caFile: l.BrokerCAFile,
		setResolvConf: l.SetAgentResolvConf}
}

// digResult is what one dig run printed.
type digResult struct {
	Status    string   // NOERROR, NXDOMAIN, REFUSED, ... ("" when no answer came)
	Server    string   // the ";; SERVER:" line: who dig believes answered
	Answers   []string // "TYPE VALUE" of the answer section
	SOA       bool     // a SOA in the authority section
	Out       string
	Code      int
	Truncated bool
}

var digStatus = regexp.MustCompile(`status: ([A-Z]+)`)

// dig runs dig as the agent with bounded timeouts. server "" uses the
// agent's resolv.conf.
func dig(g *rig, server string, tcp bool, qtype, name string, extra ...string) digResult {
	args := []string{"+time=2", "+tries=1", "+nocookie"}
	if server != "" {
		args = append(args, "@"+server)
	}
	if tcp {
		args = append(args, "+tcp")
	}
	args = append(args, extra...)
	args = append(args, name, qtype)
	out, code := g.run(10*time.Second, "dig", args...)
	return parseDig(out, code)
}

func parseDig(out string, code int) digResult {
	r := digResult{Out: out, Code: code}
	if m := digStatus.FindStringSubmatch(out); m != nil {
		r.Status = m[1]
	}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ";; ANSWER SECTION"):
			section = "answer"
			continue
		case strings.HasPrefix(line, ";; AUTHORITY SECTION"):
			section = "authority"
			continue
		case strings.HasPrefix(line, ";; SERVER:"):
			r.Server = strings.TrimSpace(strings.TrimPrefix(line, ";; SERVER:"))
		case strings.Contains(line, "Truncated"):
			r.Truncated = true
		case line == "" || strings.HasPrefix(line, ";"):
			section = ""
			continue
		}
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		switch section {
		case "answer":
			r.Answers = append(r.Answers, f[3]+" "+strings.Join(f[4:], " "))
		case "authority":
			if f[3] == "SOA" {
				r.SOA = true
			}
		}
	}
	return r
}

// family returns "-4" or "-6" for an address.
func familyFlag(a netip.Addr) string {
	if a.Is4() {
		return "-4"
	}
	return "-6"
}

func fam(a netip.Addr) string {
	if a.Is4() {
		return "v4"
	}
	return "v6"
}

// urlHost is a in URL form ([v6]).
func urlHost(a netip.Addr) string {
	if a.Is6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}

// probeScript is a raw socket client: tcp connects and sends a line; udp
// sends three datagrams on a connected socket and waits for a reply; icmp
// sends an echo request and waits for the reply. Exit 3:
// refused (RST or ICMP port unreachable), 4: timed out, 5: EPERM (a cgroup
// program or an OUTPUT rule said no), 0: sent (tcp) or a
// reply came (udp).
const probeScript = `
import socket,sys
proto,host,port=sys.argv[1],sys.argv[2],int(sys.argv[3])
fam=socket.AF_INET6 if ':' in host else socket.AF_INET
try:
    if proto=='tcp':
        s=socket.socket(fam,socket.SOCK_STREAM); s.settimeout(1)
        s.connect((host,port)); s.sendall(b'canary-probe\n'); s.close(); print('sent')
    elif proto=='icmp':
        payload=b'canary-probe'
        if fam==socket.AF_INET:
            s=socket.socket(fam,socket.SOCK_RAW,socket.IPPROTO_ICMP)
            p=bytes([8,0,0,0,0x12,0x34,0,1])+payload
            c=sum((p[i]<<8)+p[i+1] for i in range(0,len(p),2)); c=(c>>16)+(c&0xffff); c=~(c+(c>>16))&0xffff
            p=p[:2]+bytes([c>>8,c&0xff])+p[4:]
        else:
            s=socket.socket(fam,socket.SOCK_RAW,socket.IPPROTO_ICMPV6)
            p=bytes([128,0,0,0,0x12,0x34,0,1])+payload
        s.settimeout(1); s.sendto(p,(host,0))
        while True:
            d,a=s.recvfrom(2048)
            t=d[(d[0]&15)*4] if fam==socket.AF_INET else d[0]
            if a[0]==host and t in (0,129): print('reply'); break
    else:
        s=socket.socket(fam,socket.SOCK_DGRAM); s.settimeout(1)
        s.connect((host,port))
        for i in range(3): s.send(b'canary-probe')
        s.recv(100); print('reply')
except ConnectionRefusedError: print('refused'); sys.exit(3)
except (socket.timeout, TimeoutError): print('timeout'); sys.exit(4)
except PermissionError: print('eperm'); sys.exit(5)
`

// probe runs probeScript as the agent.
func probe(g *rig, proto string, dst netip.Addr, port int) (string, int) {
	return g.run(10*time.Second, "python3", "-c", probeScript, proto, dst.String(), fmt.Sprint(port))
}

// echConfigList builds an ECHConfigList (RFC 9849, version 0xfe0d) with a
// fresh X25519 key, HKDF-SHA256 and AES-128-GCM, naming publicName as the
// outer SNI. Nobody holds the key except this test: no server can accept it.
func echConfigList(publicName string) ([]byte, error) {
	key, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	pub := key.PublicKey().Bytes()
	var c []byte
	c = append(c, 7)                             // config_id
	c = binary.BigEndian.AppendUint16(c, 0x0020) // DHKEM(X25519, HKDF-SHA256)
	c = binary.BigEndian.AppendUint16(c, uint16(len(pub)))
	c = append(c, pub...)
	c = binary.BigEndian.AppendUint16(c, 4)
	c = binary.BigEndian.AppendUint16(c, 0x0001) // HKDF-SHA256
	c = binary.BigEndian.AppendUint16(c, 0x0001) // AES-128-GCM
	c = append(c, 0)                             // maximum_name_length
	c = append(c, byte(len(publicName)))
	c = append(c, publicName...)
	c = binary.BigEndian.AppendUint16(c, 0) // no extensions
	var cfg []byte
	cfg = binary.BigEndian.AppendUint16(cfg, 0xfe0d)
	cfg = binary.BigEndian.AppendUint16(cfg, uint16(len(c)))
	cfg = append(cfg, c...)
	list := binary.BigEndian.AppendUint16(nil, uint16(len(cfg)))
	return append(list, cfg...), nil
}

// echClient dials dst:443 from the agent's namespace with Go's TLS client
// offering ECH (outer SNI publicName, inner SNI inner), trusting the
// appliance's CA, sends one request if the handshake completes, and
// returns what happened. Exit 0: a response came; 35: the handshake failed;
// 36: ECH was rejected by the server.
func echClient(g *rig, dst netip.Addr, publicName, inner string) (string, int) {
	pem, err := os.ReadFile(g.caFile)
	if err != nil {
		return err.Error(), -1
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	list, err := echConfigList(publicName)
	if err != nil {
		return err.Error(), -1
	}
	var out string
	code := 0
	err = g.agentDo(func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(dst, 443).String(), 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		tc := tls.Client(c, &tls.Config{ServerName: inner, RootCAs: roots, MinVersion: tls.VersionTLS13,
			EncryptedClientHelloConfigList: list})
		if err := tc.Handshake(); err != nil {
			var rej *tls.ECHRejectionError
			if errors.As(err, &rej) {
				out, code = fmt.Sprintf("ech rejected (retry configs: %d bytes): %v", len(rej.RetryConfigList), err), 36
				return nil
			}
			out, code = "handshake: "+err.Error(), 35
			return nil
		}
		fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", inner)
		b := make([]byte, 512)
		n, _ := tc.Read(b)
		out = fmt.Sprintf("ech accepted=%v: %s", tc.ConnectionState().ECHAccepted, b[:n])
		return nil
	})
	if err != nil {
		return err.Error(), -1
	}
	return out, code
}

// snapshot is what the fake internet has seen so far.
type snapshot struct {
	conns, bytes, datagrams int64
	received                int
	queries                 int
}

func seen(g *rig) snapshot {
	c, b, d := g.canary.Total()
	return snapshot{conns: c, bytes: b, datagrams: d, received: len(g.received()), queries: len(g.dns.Queries())}
}

func lastSeq(t *testing.T, g *rig) uint64 {
	t.Helper()
	seq, err := appliance.AuditLastSeq(g.srv)
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// waitAudit fails the test unless a row matching want appears after seq.
func waitAudit(t *testing.T, g *rig, seq uint64, what string, match func(appliance.AuditRow) bool) appliance.AuditRow {
	t.Helper()
	row, rows, ok, err := appliance.WaitAudit(g.srv, seq, match)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Errorf("no audit row %s after #%d; rows: %v", what, seq, rows)
	}
	return row
}

func dnsRow(host, qtype, decision, reason string) func(appliance.AuditRow) bool {
	return func(r appliance.AuditRow) bool {
		return r.Action == "dns.query" && r.Host == host && r.Method == qtype && r.Decision == decision && r.Reason == reason &&
			r.Actor == "agent:"+appliance.Agent
	}
}
