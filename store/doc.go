// Package store owns the appliance's one bbolt file: its buckets, schema
// version and migrations, the encryption of credential values and of the CA
// key at rest, users and sessions, vaults, credentials, services, agents and
// the hash-chained audit log with its group-commit writer.
//
// It may import policy and audit, nothing else of ours; the data path never
// imports it and reads only what cmd hands over (policy snapshots and the
// Secret lookup).
package store
