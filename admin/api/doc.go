// Package api holds the JSON shapes of the admin HTTP API (/api/v1): what the
// admin server writes and the admin client reads. It has no behaviour, so the
// client (used by the CLI, tests and benchmarks) does not pull in the server
// or the store.
//
// It may import policy and audit, nothing else of ours. No type here ever
// carries a credential value on the way out: the only field that holds a
// secret is CredentialValue.Value, which is request-only.
package api
