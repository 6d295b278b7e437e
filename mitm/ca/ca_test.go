package ca_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/agentvault/agent-vault/mitm/ca"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// clock is a settable Options.Now.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock { c := &clock{}; c.ns.Store(t.UnixNano()); return c }
func (c *clock) Now() time.Time   { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) Add(d time.Duration) {
	c.ns.Add(int64(d))
}

func newAuthority(t testing.TB, opt ca.Options) *ca.Authority {
	t.Helper()
	certDER, keyDER, err := ca.Generate(t0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.New(certDER, keyDER, opt)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestGenerate(t *testing.T) {
	certDER, keyDER, err := ca.Generate(t0)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.MaxPathLen != 0 || !cert.MaxPathLenZero {
		t.Errorf("root constraints: IsCA=%v valid=%v maxPathLen=%d zero=%v", cert.IsCA, cert.BasicConstraintsValid, cert.MaxPathLen, cert.MaxPathLenZero)
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Error("root cannot sign certificates")
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Errorf("root key is %T, want ECDSA P-256", cert.PublicKey)
	}
	if !strings.HasPrefix(cert.Subject.CommonName, "Agent Vault Local CA ") || len(cert.Subject.CommonName) <= len("Agent Vault Local CA ") {
		t.Errorf("common name %q", cert.Subject.CommonName)
	}
	if got := cert.NotAfter.Sub(t0); got < 9*365*24*time.Hour || got > 11*365*24*time.Hour {
		t.Errorf("root valid for %v after now, want about ten years", got)
	}
	if !cert.NotBefore.Before(t0) {
		t.Errorf("root NotBefore %v not before now", cert.NotBefore)
	}
	if len(cert.SubjectKeyId) == 0 {
		t.Error("root has no subject key id")
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		t.Fatalf("key is not PKCS#8: %v", err)
	}
	if !k.(*ecdsa.PrivateKey).PublicKey.Equal(cert.PublicKey) {
		t.Error("key does not match certificate")
	}
	other, _, err := ca.Generate(t0)
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := x509.ParseCertificate(other)
	if c2.Subject.CommonName == cert.Subject.CommonName {
		t.Error("two roots share a common name")
	}
}

func TestNewRejects(t *testing.T) {
	certA, keyA, err := ca.Generate(t0)
	if err != nil {
		t.Fatal(err)
	}
	_, keyB, err := ca.Generate(t0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.New(certA, keyA, ca.Options{Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := a.Leaf("api.example.com")
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct{ cert, key []byte }{
		"mismatched key": {certA, keyB},
		"garbage cert":   {[]byte("nope"), keyA},
		"garbage key":    {certA, []byte("nope")},
		"leaf as root":   {leaf.Certificate[0], leafKey},
	} {
		if _, err := ca.New(c.cert, c.key, ca.Options{}); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
}

func TestLeafVerifiesForExactlyItsName(t *testing.T) {
	clk := newClock(t0.Add(time.Hour))
	a := newAuthority(t, ca.Options{Now: clk.Now})
	roots := x509.NewCertPool()
	roots.AddCert(a.Certificate())

	for _, name := range []string{"api.example.com", "localhost", "127.0.0.1", "2001:db8::1"} {
		c, err := a.Leaf(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(c.Certificate) != 2 || string(c.Certificate[1]) != string(a.Certificate().Raw) {
			t.Fatalf("%s: chain is not [leaf, root]", name)
		}
		if c.Leaf == nil || string(c.Leaf.Raw) != string(c.Certificate[0]) {
			t.Fatalf("%s: Leaf not parsed", name)
		}
		opts := x509.VerifyOptions{DNSName: name, Roots: roots, CurrentTime: clk.Now()}
		if _, err := c.Leaf.Verify(opts); err != nil {
			t.Errorf("%s: does not verify: %v", name, err)
		}
		opts.DNSName = "other.example.com"
		if _, err := c.Leaf.Verify(opts); err == nil {
			t.Errorf("%s: verifies for another name", name)
		}
		if c.Leaf.IsCA {
			t.Errorf("%s: leaf is a CA", name)
		}
		if got := clk.Now().Sub(c.Leaf.NotBefore); got != ca.LeafBackdate {
			t.Errorf("%s: NotBefore is %v before now, want %v", name, got, ca.LeafBackdate)
		}
		if got := c.Leaf.NotAfter.Sub(clk.Now()); got != ca.DefaultLeafTTL {
			t.Errorf("%s: valid for %v, want %v", name, got, ca.DefaultLeafTTL)
		}
		pub, ok := c.Leaf.PublicKey.(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P256() {
			t.Errorf("%s: leaf key %T, want ECDSA P-256", name, c.Leaf.PublicKey)
		}
		if len(c.Leaf.DNSNames)+len(c.Leaf.IPAddresses) != 1 {
			t.Errorf("%s: SANs %v %v, want exactly the name", name, c.Leaf.DNSNames, c.Leaf.IPAddresses)
		}
	}
	ipLeaf, _ := a.Leaf("127.0.0.1")
	if len(ipLeaf.Leaf.IPAddresses) != 1 || len(ipLeaf.Leaf.DNSNames) != 0 {
		t.Errorf("IP name got DNS %v IP %v", ipLeaf.Leaf.DNSNames, ipLeaf.Leaf.IPAddresses)
	}
}

// TestRealHandshake serves the leaves over a loopback TLS listener and
// connects with a client trusting only the root.
func TestRealHandshake(t *testing.T) {
	a := newAuthority(t, ca.Options{})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: a.GetCertificate, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.(*tls.Conn).Handshake()
				_, _ = io.WriteString(c, "ok")
			}()
		}
	}()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(a.CertPEM()) {
		t.Fatal("CertPEM does not parse")
	}
	dial := func(cfg *tls.Config) error {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		if err == nil && string(b) != "ok" {
			err = errors.New("unexpected reply " + string(b))
		}
		return err
	}
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		if err := dial(&tls.Config{ServerName: "api.example.com", RootCAs: roots, MaxVersion: v}); err != nil {
			t.Errorf("version %x: handshake for the SNI: %v", v, err)
		}
	}
	// The leaf is for the SNI only: a client that checks another name fails.
	err = dial(&tls.Config{ServerName: "api.example.com", RootCAs: roots, VerifyConnection: func(cs tls.ConnectionState) error {
		return cs.PeerCertificates[0].VerifyHostname("evil.example.com")
	}})
	if err == nil {
		t.Error("leaf for api.example.com accepted for evil.example.com")
	}
	// A client that does not trust the root fails.
	if err := dial(&tls.Config{ServerName: "api.example.com"}); err == nil {
		t.Error("handshake succeeded without trusting the root")
	}
	ln.Close()
	wg.Wait()
}

func TestCacheHitAndNormalization(t *testing.T) {
	a := newAuthority(t, ca.Options{})
	c1, err := a.Leaf("api.example.com")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"api.example.com", "API.Example.COM", "api.example.com."} {
		c, err := a.Leaf(n)
		if err != nil {
			t.Fatal(err)
		}
		if c != c1 {
			t.Errorf("%q: a new certificate instead of the cached one", n)
		}
	}
	if a.Minted() != 1 || a.Len() != 1 {
		t.Errorf("minted %d, cached %d; want 1, 1", a.Minted(), a.Len())
	}
	if got := c1.Leaf.DNSNames; len(got) != 1 || got[0] != "api.example.com" {
		t.Errorf("DNS names %v", got)
	}
}

func TestRenewal(t *testing.T) {
	clk := newClock(t0)
	ttl := 3 * time.Hour
	a := newAuthority(t, ca.Options{Now: clk.Now, LeafTTL: ttl})
	c1, err := a.Leaf("api.example.com")
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(2*time.Hour - time.Second) // just before two thirds
	if c, _ := a.Leaf("api.example.com"); c != c1 {
		t.Fatal("renewed too early")
	}
	clk.Add(time.Second)
	c2, err := a.Leaf("api.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if c2 == c1 {
		t.Fatal("not renewed after two thirds of the lifetime")
	}
	if !c2.Leaf.NotAfter.Equal(clk.Now().Add(ttl)) {
		t.Errorf("renewed leaf expires %v, want %v", c2.Leaf.NotAfter, clk.Now().Add(ttl))
	}
	if c, _ := a.Leaf("api.example.com"); c != c2 {
		t.Error("renewed leaf not cached")
	}
	if a.Len() != 1 || a.Minted() != 2 {
		t.Errorf("cached %d minted %d, want 1 and 2", a.Len(), a.Minted())
	}
}

func TestRootExpiry(t *testing.T) {
	clk := newClock(t0)
	a := newAuthority(t, ca.Options{Now: clk.Now, LeafTTL: 48 * time.Hour})
	clk.ns.Store(a.Certificate().NotAfter.Add(-time.Hour).UnixNano())
	c, err := a.Leaf("a.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if c.Leaf.NotAfter.After(a.Certificate().NotAfter) {
		t.Error("leaf outlives the root")
	}
	clk.Add(2 * time.Hour)
	if _, err := a.Leaf("a.example.com"); err == nil {
		t.Error("leaf minted by an expired root")
	}
}

func TestCacheBounded(t *testing.T) {
	a := newAuthority(t, ca.Options{CacheSize: 8})
	hot, err := a.Leaf("hot.example.com")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if c, _ := a.Leaf("hot.example.com"); c != hot {
			t.Fatalf("round %d: the hot leaf was evicted", i)
		}
		if _, err := a.Leaf("n" + strconv.Itoa(i) + ".example.com"); err != nil {
			t.Fatal(err)
		}
		if n := a.Len(); n > 8 {
			t.Fatalf("cache holds %d leaves, bound is 8", n)
		}
	}
	if a.Len() != 8 {
		t.Errorf("cache holds %d, want 8", a.Len())
	}
	if a.Minted() != 51 {
		t.Errorf("minted %d, want 51", a.Minted())
	}
	// a cold name was evicted and is minted again
	if _, err := a.Leaf("n0.example.com"); err != nil {
		t.Fatal(err)
	}
	if a.Minted() != 52 {
		t.Errorf("an evicted name was not minted again (minted %d)", a.Minted())
	}
}

func TestConcurrentFirstRequestsMintOnce(t *testing.T) {
	a := newAuthority(t, ca.Options{})
	const n = 64
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		got   [n]*tls.Certificate
		errs  [n]error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			got[i], errs[i] = a.Leaf("same.example.com")
		}()
	}
	close(start)
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if got[i] != got[0] {
			t.Fatalf("goroutine %d got a different certificate", i)
		}
	}
	if a.Minted() != 1 {
		t.Errorf("minted %d times, want once", a.Minted())
	}
}

func TestInvalidNames(t *testing.T) {
	a := newAuthority(t, ca.Options{})
	label63 := strings.Repeat("a", 63)
	long := strings.Repeat(label63+".", 4)[:253]
	long = long[:252] + "b"
	for _, ok := range []string{"localhost", "xn--bcher-kva.example", "a-b.c-d.example", label63 + ".example", long, "10.0.0.1", "::1", "[::1]"} {
		if _, err := a.Leaf(ok); err != nil {
			t.Errorf("%.40q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", ".", "a..b", ".a.b", "-a.example", "a-.example", "a.-b.example", "a_b.example", "a b.example",
		"*.example.com", "exa\x00mple.com", "exa\rmple.com", "ex/ample.com", "fe80::1%eth0",
		strings.Repeat("a", 64) + ".example", long + "c", strings.Repeat("a.", 200) + "com",
		"ünicode.example", "a.example..",
	} {
		_, err := a.Leaf(bad)
		if !errors.Is(err, ca.ErrInvalidName) {
			t.Errorf("%.40q: error %v, want ErrInvalidName", bad, err)
		}
	}
	if a.Len() != len([]string{"localhost", "xn", "a-b", "63", "long", "10", "::1"}) {
		t.Errorf("cache holds %d leaves", a.Len())
	}
}

func TestCertPEM(t *testing.T) {
	a := newAuthority(t, ca.Options{})
	b, rest := pem.Decode(a.CertPEM())
	if b == nil || b.Type != "CERTIFICATE" || len(rest) != 0 {
		t.Fatal("CertPEM is not one PEM certificate")
	}
	if string(b.Bytes) != string(a.Certificate().Raw) {
		t.Error("CertPEM is not the root")
	}
	p := a.CertPEM()
	p[0] = 'X'
	if a.CertPEM()[0] == 'X' {
		t.Error("CertPEM returns shared memory")
	}
}

// The leaf's key may be shared (see the package doc), but every leaf is a
// distinct certificate with its own serial.
func TestSerialsDiffer(t *testing.T) {
	a := newAuthority(t, ca.Options{})
	x, _ := a.Leaf("x.example.com")
	y, _ := a.Leaf("y.example.com")
	if x.Leaf.SerialNumber.Cmp(y.Leaf.SerialNumber) == 0 {
		t.Error("two leaves share a serial number")
	}
}
