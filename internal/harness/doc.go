// Package harness runs the real pieces a user would run, for end-to-end
// tests, `make demo` and `make bench`: a test CA, a TLS echo upstream that
// records what it received, a small authoritative DNS server for test names,
// and the agent-vault binary itself as a child process driven through its CLI.
//
// Everything listens on loopback (or inside network namespaces the caller
// made). It imports nothing of ours, so it exercises the product only through
// its public surfaces: the binary, its flags, its CLI and its ports.
package harness
