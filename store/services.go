package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/agentvault/agent-vault/audit"
	"github.com/agentvault/agent-vault/policy"
)

// serviceRecord is services/<vault 0x00 name> in schema 2: the service's
// fields plus a version and who created it. Schema 1 stored the bare
// policy.Service JSON (no "v", no creation fields); see migrate.go.
type serviceRecord struct {
	V int `json:"v"`
	policy.Service
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by,omitempty"`
}

const serviceRecordVersion = 2

func decodeService(k, v []byte) (policy.Service, error) {
	var rec serviceRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return policy.Service{}, fmt.Errorf("decode service %q: %w", bytes.ReplaceAll(k, []byte{0}, []byte{'/'}), err)
	}
	if rec.V != serviceRecordVersion {
		return policy.Service{}, fmt.Errorf("decode service %q: record version %d, want %d", bytes.ReplaceAll(k, []byte{0}, []byte{'/'}), rec.V, serviceRecordVersion)
	}
	return rec.Service, nil
}

// AddService normalizes and validates svc (ErrInvalid wrapping the
// *policy.ValidationError), checks the vault and the named credential exist,
// and stores it (ErrExists for a duplicate name in the vault). Audited as
// service.add.
func (s *Store) AddService(actor audit.Actor, svc policy.Service) (policy.Service, error) {
	svc.Methods = slices.Clone(svc.Methods)
	svc.Auth.In = slices.Clone(svc.Auth.In)
	svc.Auth.BodyFields = slices.Clone(svc.Auth.BodyFields)
	svc.Normalize()
	if err := svc.Validate(); err != nil {
		return policy.Service{}, fmt.Errorf("add service: %w", invalid(err))
	}
	now := s.now().UTC()
	raw, err := json.Marshal(serviceRecord{V: serviceRecordVersion, Service: svc, CreatedAt: now, CreatedBy: actor.Name})
	if err != nil {
		return policy.Service{}, fmt.Errorf("add service: %w", err)
	}
	rk := pairKey(svc.Vault, svc.Name)
	m := &mutation{policy: true, event: audit.Event{
		Time: now, Actor: actor, Action: "service.add", Vault: svc.Vault, Target: svc.Name,
		Service: svc.Name, Credential: svc.Auth.Credential, Host: svc.Host,
	}}
	err = s.update(m, func(tx *bolt.Tx) error {
		if bucket(tx, bucketVaults).Get([]byte(svc.Vault)) == nil {
			return vaultMissing(svc.Vault)
		}
		if svc.Auth.Kind != policy.AuthNone && bucket(tx, bucketCredentials).Get(pairKey(svc.Vault, svc.Auth.Credential)) == nil {
			return fmt.Errorf("credential %q does not exist in vault %q: %w (set it first with credential set)", svc.Auth.Credential, svc.Vault, ErrNotFound)
		}
		b := bucket(tx, bucketServices)
		if b.Get(rk) != nil {
			return fmt.Errorf("service %q in vault %q: %w", svc.Name, svc.Vault, ErrExists)
		}
		return b.Put(rk, raw)
	})
	if err != nil {
		return policy.Service{}, fmt.Errorf("add service: %w", err)
	}
	return svc, nil
}

// Services lists a vault's services by name.
func (s *Store) Services(vault string) ([]policy.Service, error) {
	var out []policy.Service
	err := s.db.View(func(tx *bolt.Tx) error {
		if bucket(tx, bucketVaults).Get([]byte(vault)) == nil {
			return vaultMissing(vault)
		}
		prefix := vaultPrefix(vault)
		c := bucket(tx, bucketServices).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			svc, err := decodeService(k, v)
			if err != nil {
				return err
			}
			out = append(out, svc)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	return out, nil
}

// DeleteService deletes a service, audited as service.delete.
func (s *Store) DeleteService(actor audit.Actor, vault, name string) error {
	rk := pairKey(vault, name)
	m := &mutation{policy: true, event: audit.Event{Actor: actor, Action: "service.delete", Vault: vault, Target: name, Service: name}}
	err := s.update(m, func(tx *bolt.Tx) error {
		if bucket(tx, bucketVaults).Get([]byte(vault)) == nil {
			return vaultMissing(vault)
		}
		b := bucket(tx, bucketServices)
		if b.Get(rk) == nil {
			return fmt.Errorf("service %q in vault %q: %w", name, vault, ErrNotFound)
		}
		return b.Delete(rk)
	})
	if err != nil {
		return fmt.Errorf("delete service: %w", err)
	}
	return nil
}
