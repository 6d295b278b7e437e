// Package audit owns the audit Event, the Sink that durably records events,
// and the hash chain that makes the log tamper-evident.
//
// Every row carries the hash of the row before it: Hash = SHA-256 of the
// previous row's hash followed by the row's canonical JSON (the row with its
// Hash field empty). The chain does not depend on where rows are kept, so a
// bbolt file and a future networked store verify the same way.
//
// An Event never carries a secret value: it names credentials, never holds
// them. It imports nothing of ours.
package audit
