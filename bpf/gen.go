package bpf

// Regenerate capture_bpfel.go and capture_bpfel.o from capture.c (needs
// clang, llvm-strip and libbpf-dev: `make generate`). The outputs are
// committed so that `go build` needs only Go; TestGeneratedObjectsFresh
// fails when they are stale.
//
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target bpfel capture capture.c -- -I/usr/include/x86_64-linux-gnu -Wall -Werror
