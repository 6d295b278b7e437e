package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Options.
const (
	DefaultLeafTTL   = 24 * time.Hour
	DefaultCacheSize = 10000
)

// LeafBackdate is how far a leaf's NotBefore lies before the moment it was
// minted, so clients with a slightly slow clock accept it.
const LeafBackdate = 5 * time.Minute

// ErrInvalidName is wrapped by Leaf's error for a name that is neither a DNS
// host name nor an IP address.
var ErrInvalidName = errors.New("invalid server name")

// Options tune an Authority. The zero value is usable.
type Options struct {
	LeafTTL   time.Duration    // lifetime of a leaf; 0 means DefaultLeafTTL
	CacheSize int              // most leaves kept; 0 means DefaultCacheSize
	Now       func() time.Time // clock; nil means time.Now
}

// Authority is the root CA and a bounded cache of leaves. It is safe for
// concurrent use.
type Authority struct {
	root    *x509.Certificate
	rootKey crypto.Signer
	rootPEM []byte
	leafKey *ecdsa.PrivateKey // shared by every leaf, see the package doc
	ttl     time.Duration
	size    int
	now     func() time.Time

	mu       sync.RWMutex
	entries  map[string]*entry
	ring     []*entry // CLOCK order; len(ring) == len(entries)
	hand     int
	inflight map[string]*call

	mints atomic.Int64 // leaves signed, for tests and metrics
}

type entry struct {
	name string
	leaf atomic.Pointer[leaf]
	ref  atomic.Bool // CLOCK reference bit: used since the hand last passed
}

type leaf struct {
	cert    *tls.Certificate
	renewAt int64 // unix nanoseconds after which the leaf is minted again
}

type call struct {
	done chan struct{}
	cert *tls.Certificate
	err  error
}

// New loads a root (DER certificate, PKCS#8 DER key) and prepares a leaf key
// and an empty cache. It checks that the key matches the certificate and that
// the certificate is a CA.
func New(certDER, keyDER []byte, opt Options) (*Authority, error) {
	root, rootKey, err := parseRoot(certDER, keyDER)
	if err != nil {
		return nil, err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate leaf key: %w", err)
	}
	if opt.LeafTTL <= 0 {
		opt.LeafTTL = DefaultLeafTTL
	}
	if opt.CacheSize <= 0 {
		opt.CacheSize = DefaultCacheSize
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	return &Authority{
		root:     root,
		rootKey:  rootKey,
		rootPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}),
		leafKey:  leafKey,
		ttl:      opt.LeafTTL,
		size:     opt.CacheSize,
		now:      opt.Now,
		entries:  make(map[string]*entry),
		inflight: make(map[string]*call),
	}, nil
}

// CertPEM returns the root certificate in PEM form (a fresh copy).
func (a *Authority) CertPEM() []byte { return bytes.Clone(a.rootPEM) }

// Certificate returns the parsed root certificate. Do not modify it.
func (a *Authority) Certificate() *x509.Certificate { return a.root }

// Len returns the number of leaves in the cache.
func (a *Authority) Len() int {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return len(a.entries)
}

// Minted returns how many leaves this Authority has signed.
func (a *Authority) Minted() int64 { return a.mints.Load() }

// GetCertificate serves tls.Config.GetCertificate: the leaf for the SNI.
func (a *Authority) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return a.Leaf(hello.ServerName)
}

// Leaf returns a certificate for exactly name: a DNS SAN, or an IP SAN when
// name is an IP address. Names are compared case-insensitively and without
// a trailing dot. The result carries the chain [leaf, root], its private key
// and the parsed leaf; it is shared between callers and must not be
// modified. Leaves are cached and minted again once two thirds of their
// lifetime have passed.
func (a *Authority) Leaf(name string) (*tls.Certificate, error) {
	key, ip, err := normalizeName(name)
	if err != nil {
		return nil, err
	}
	now := a.now()
	a.mu.RLock()
	e := a.entries[key]
	a.mu.RUnlock()
	if e != nil {
		if l := e.leaf.Load(); now.UnixNano() < l.renewAt {
			if !e.ref.Load() {
				e.ref.Store(true)
			}
			return l.cert, nil
		}
	}
	return a.mint(key, ip, now)
}

// mint signs a leaf for key unless another goroutine is already doing so,
// in which case it waits for that one. No lock is held while signing.
func (a *Authority) mint(key string, ip netip.Addr, now time.Time) (*tls.Certificate, error) {
	a.mu.Lock()
	if e := a.entries[key]; e != nil {
		if l := e.leaf.Load(); now.UnixNano() < l.renewAt {
			a.mu.Unlock()
			return l.cert, nil
		}
	}
	if c := a.inflight[key]; c != nil {
		a.mu.Unlock()
		<-c.done
		return c.cert, c.err
	}
	c := &call{done: make(chan struct{})}
	a.inflight[key] = c
	a.mu.Unlock()

	var renewAt int64
	c.cert, renewAt, c.err = a.sign(key, ip, now)

	a.mu.Lock()
	delete(a.inflight, key)
	if c.err == nil {
		a.insert(key, &leaf{cert: c.cert, renewAt: renewAt})
	}
	a.mu.Unlock()
	close(c.done)
	return c.cert, c.err
}

// insert stores a leaf, evicting by CLOCK when the cache is full. a.mu is
// held for writing.
func (a *Authority) insert(key string, l *leaf) {
	if e := a.entries[key]; e != nil {
		e.leaf.Store(l)
		return
	}
	e := &entry{name: key}
	e.leaf.Store(l)
	a.entries[key] = e
	if len(a.ring) < a.size {
		a.ring = append(a.ring, e)
		return
	}
	// Second chance: clear reference bits until an unreferenced entry comes
	// under the hand. Hits may set bits concurrently, so stop after two
	// rounds and take whatever the hand points at.
	for i := 0; i < 2*len(a.ring); i++ {
		if !a.ring[a.hand].ref.Load() {
			break
		}
		a.ring[a.hand].ref.Store(false)
		a.hand = (a.hand + 1) % len(a.ring)
	}
	delete(a.entries, a.ring[a.hand].name)
	a.ring[a.hand] = e
	a.hand = (a.hand + 1) % len(a.ring)
}

// sign creates a leaf for name (ip is valid for an IP address name).
func (a *Authority) sign(name string, ip netip.Addr, now time.Time) (*tls.Certificate, int64, error) {
	if !now.Before(a.root.NotAfter) {
		return nil, 0, errors.New("root certificate has expired; generate a new root")
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, 0, err
	}
	notAfter := now.Add(a.ttl)
	if notAfter.After(a.root.NotAfter) {
		notAfter = a.root.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-LeafBackdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if len(name) <= 64 { // the upper bound of a common name
		tmpl.Subject = pkix.Name{CommonName: name}
	}
	if ip.IsValid() {
		tmpl.IPAddresses = []net.IP{ip.AsSlice()}
	} else {
		tmpl.DNSNames = []string{name}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.root, &a.leafKey.PublicKey, a.rootKey)
	if err != nil {
		return nil, 0, fmt.Errorf("sign leaf certificate: %w", err)
	}
	parsed, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, 0, fmt.Errorf("parse leaf certificate: %w", err)
	}
	a.mints.Add(1)
	renewAt := now.Add(a.ttl * 2 / 3)
	if renewAt.After(notAfter) {
		renewAt = notAfter
	}
	return &tls.Certificate{
		Certificate: [][]byte{der, a.root.Raw},
		PrivateKey:  a.leafKey,
		Leaf:        parsed,
	}, renewAt.UnixNano(), nil
}
