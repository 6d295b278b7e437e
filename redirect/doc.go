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
// Local mode hands the original destination over through a BPF map keyed by
// the 4-tuple, not through a cgroup/getsockopt program answering
// SO_ORIGINAL_DST: such a program would have to be attached to the
// broker's own cgroup (the accepted socket lives there), not only to the
// agents', and SO_ORIGINAL_DST has no room for the agent's cgroup id. So the
// broker gets the lookup function matching the mode from cmd: OriginalDst
// (gateway) or (*Local).OriginalDst (local), and for UDP DNS in local mode
// (*Local).DNSOrigin.
//
// The netns pitfall: a cgroup hook's rewritten address is interpreted in
// the socket's own network namespace. The programs deny every socket whose
// network namespace is not the one AttachCgroup was called in, so an agent
// in a container with its own netns fails closed instead of reaching its
// own loopback.
//
// It may import bpf (ours) plus the standard library, golang.org/x/sys,
// github.com/coreos/go-iptables and github.com/cilium/ebpf; it must not
// import mitm, store, admin or dnsproxy.
package redirect
