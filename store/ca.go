package store

import (
	"bytes"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
)

// The root CA lives in meta: the certificate in clear (it is public), the
// private key sealed with the DEK under associated data "meta" 0x00 "ca_key".

// CA returns the stored root CA certificate (DER) and private key (DER,
// decrypted); ErrNotFound when none is stored yet.
func (s *Store) CA() (certDER, keyDER []byte, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		m := bucket(tx, bucketMeta)
		cert, sealed := m.Get(metaCACert), m.Get(metaCAKey)
		if cert == nil || sealed == nil {
			return fmt.Errorf("root ca: %w", ErrNotFound)
		}
		key, err := s.aead.open(bucketMeta, metaCAKey, sealed)
		if err != nil {
			return fmt.Errorf("decrypt root ca key: %w", err)
		}
		certDER, keyDER = bytes.Clone(cert), key
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return certDER, keyDER, nil
}

// PutCA stores the root CA, the key encrypted with the data key, replacing
// any stored one. Audited as ca.store by the system actor.
func (s *Store) PutCA(certDER, keyDER []byte) error {
	if len(certDER) == 0 || len(keyDER) == 0 {
		return fmt.Errorf("store root ca: %w: certificate and key must not be empty", ErrInvalid)
	}
	sealed, err := s.aead.seal(bucketMeta, metaCAKey, keyDER)
	if err != nil {
		return fmt.Errorf("store root ca: %w", err)
	}
	m := &mutation{event: audit.Event{Actor: audit.System, Action: "ca.store", Target: "root"}}
	err = s.update(m, func(tx *bolt.Tx) error {
		b := bucket(tx, bucketMeta)
		if err := b.Put(metaCACert, bytes.Clone(certDER)); err != nil {
			return err
		}
		return b.Put(metaCAKey, sealed)
	})
	if err != nil {
		return fmt.Errorf("store root ca: %w", err)
	}
	return nil
}
