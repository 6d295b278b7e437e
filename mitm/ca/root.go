package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// RootValidity is how long a generated root is valid.
const RootValidity = 10 * 365 * 24 * time.Hour

// rootBackdate lets clients whose clock runs a little behind accept a root
// generated a moment ago.
const rootBackdate = time.Hour

// Generate creates a new root: an ECDSA P-256 key and a self-signed CA
// certificate valid from now (backdated one hour) for RootValidity, allowed
// to sign leaves only (MaxPathLenZero), named "Agent Vault Local CA <random>".
// keyDER is PKCS#8.
func Generate(now time.Time) (certDER, keyDER []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate root key: %w", err)
	}
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		return nil, nil, fmt.Errorf("generate root name: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:   "Agent Vault Local CA " + hex.EncodeToString(suffix),
			Organization: []string{"Agent Vault"},
		},
		NotBefore:             now.Add(-rootBackdate),
		NotAfter:              now.Add(RootValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		// SubjectKeyId is derived from the public key by x509 for a CA template.
	}
	certDER, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign root certificate: %w", err)
	}
	keyDER, err = x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode root key: %w", err)
	}
	return certDER, keyDER, nil
}

// parseRoot checks that certDER is a CA certificate and keyDER its PKCS#8
// private key.
func parseRoot(certDER, keyDER []byte) (*x509.Certificate, crypto.Signer, error) {
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, nil, fmt.Errorf("parse root certificate: %w", err)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, nil, errors.New("root certificate is not a CA")
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, errors.New("root certificate may not sign certificates")
	}
	k, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		// the error of x509 says nothing about the key's bytes
		return nil, nil, fmt.Errorf("parse root key: %w", err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("root key of type %T cannot sign", k)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := signer.Public().(equaler)
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, nil, errors.New("root key does not match the root certificate")
	}
	return cert, signer, nil
}

func randomSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil // never zero
}
