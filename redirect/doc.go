// Package redirect owns the kernel capture layer: it computes the iptables
// rules of gateway mode (shape G) and of the local-mode backstop as data
// (GatewayPlan, LocalBackstopPlan: pure, golden-tested), installs and removes
// them (Apply, Cleanup: own AV-* chains in both families, one jump rule per
// built-in chain, idempotent, gapless), attaches the eBPF cgroup programs of
// local mode (shape L, AttachCgroup) and answers where a captured connection
// was going (OriginalDst via SO_ORIGINAL_DST for iptables, a BPF map lookup
// keyed by the connection's 4-tuple for eBPF). It also owns the bypass mark
// the broker puts on its own upstream sockets (MarkControl).
//
// It may import bpf (ours) plus the standard library, golang.org/x/sys,
// github.com/coreos/go-iptables and github.com/cilium/ebpf; it must not
// import mitm, store, admin or dnsproxy.
package redirect
