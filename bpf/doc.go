// Package bpf owns the eBPF programs of local mode (shape L): the C source
// (capture.c), the objects bpf2go generated from it (committed, so `go build`
// needs no clang; `make generate` rebuilds them and a test fails when they
// are stale), loading them with the broker's addresses baked in (Load), and
// typed access to the maps that record each captured connection's original
// destination and the agent's cgroup id (TakeConnOrigin, DNSOrigin).
// Attaching to a cgroup is the caller's (redirect's) business.
//
// It imports nothing of ours: only the standard library and
// github.com/cilium/ebpf.
package bpf
