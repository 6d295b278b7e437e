// Package store owns the appliance's bbolt file and its audit journal: the
// buckets, schema version and migrations, the encryption of credential
// values and of the CA key at rest, users and sessions, vaults,
// credentials, services, agents and the hash-chained audit log. Audit rows
// are sealed by one chain head and written to the journal (the file's name
// plus ".audit-journal") before Append returns, then committed to bbolt by
// group commit; journal.go records why this departs from ARCHITECTURE.md
// §3.6 ("durably committed before the credential is attached") and the
// --audit-sync always mode that keeps the strict reading. Credential values
// are served to the data path from an in-memory decrypted cache (Secret)
// and policy from immutable snapshots (Snapshot, SetOnPolicyChange); the
// file layout is described in store.go and its history in migrate.go.
//
// It may import policy and audit, nothing else of ours; the data path never
// imports it and reads only what cmd hands over (policy snapshots and the
// Secret lookup).
package store
