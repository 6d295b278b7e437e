// Package store owns the appliance's one bbolt file: its buckets, schema
// version and migrations, the encryption of credential values and of the CA
// key at rest, users and sessions, vaults, credentials, services, agents and
// the hash-chained audit log with its group-commit writer. Credential values
// are served to the data path from an in-memory decrypted cache (Secret) and
// policy from immutable snapshots (Snapshot, Changed); the file layout is
// described in store.go and its history in migrate.go.
//
// It may import policy and audit, nothing else of ours; the data path never
// imports it and reads only what cmd hands over (policy snapshots and the
// Secret lookup).
package store
