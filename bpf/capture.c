//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// Local-mode capture (shape L): cgroup hooks attached to the agents' cgroup
// only. TCP to ports 80/443 is rewritten to the broker's transparent
// listener, TCP and UDP to port 53 to the DNS proxy; every other connect and
// every other UDP send is denied (return 0 -> EPERM). The original
// destination and the agent's cgroup id are recorded so the broker can ask:
//
//   connect4/6  record {orig dst, cgroup id} by socket cookie, rewrite
//   sockops     at TCP_CONNECT (source port known, SYN not yet sent) move
//               the record to conn_by_flow, keyed by the 4-tuple the broker
//               sees on the accepted socket
//   sendmsg4/6  unconnected UDP to port 53: record by cookie, rewrite
//   recvmsg4/6  a reply from the DNS proxy gets the original source back
//   egress      a UDP packet to the DNS proxy: record by its source
//               address+port (what the DNS proxy sees) in dns_by_src
//
// Every address in a key or value is 16 bytes, IPv4 as ::ffff:a.b.c.d;
// ports in keys and values are in host byte order.
//
// Verifier note (clang-14): ctx fields are read once into locals and each
// ctx field is written at most once.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define PROTO_UDP 17
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

char __license[] SEC("license") = "Dual MIT/GPL";

// Configuration, set by the loader before the programs are loaded. IPs and
// ports in network byte order; a zero port means "not configured": that
// traffic is denied.
volatile const __u32 transparent4_ip;
volatile const __u16 transparent4_port;
volatile const __u32 transparent6_ip[4];
volatile const __u16 transparent6_port;
volatile const __u32 dns4_ip;
volatile const __u16 dns4_port;
volatile const __u32 dns6_ip[4];
volatile const __u16 dns6_port;
// Sockets of another network namespace are denied: the rewritten address
// would mean something else there. 0 disables the check.
volatile const __u64 netns_cookie;

struct origin {
	__u8 addr[16];
	__u16 port;
	__u16 pad1;
	__u32 pad2;
	__u64 cgroup_id;
};

struct flow {
	__u8 src[16]; // the agent socket's local address = the broker's peer
	__u8 dst[16]; // the rewritten destination = the broker's local address
	__u16 sport;
	__u16 dport;
	__u32 pad;
};

struct src_key {
	__u8 addr[16];
	__u16 port;
	__u16 pad1;
	__u32 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct origin);
} conn_by_cookie SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow);
	__type(value, struct origin);
} conn_by_flow SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct origin);
} dns_by_cookie SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct src_key);
	__type(value, struct origin);
} dns_by_src SEC(".maps");

// rd reads one 32-bit ctx field; volatile keeps clang from merging two
// neighbouring reads into one 64-bit load the verifier rejects.
#define rd(x) (*(volatile __u32 *)&(x))

static __always_inline void map4(__u8 *dst, __u32 ip)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &ip, 4);
}

static __always_inline void copy6(__u8 *dst, __u32 a, __u32 b, __u32 c, __u32 d)
{
	__builtin_memcpy(dst, &a, 4);
	__builtin_memcpy(dst + 4, &b, 4);
	__builtin_memcpy(dst + 8, &c, 4);
	__builtin_memcpy(dst + 12, &d, 4);
}

static __always_inline int foreign_netns(struct bpf_sock_addr *ctx)
{
	__u64 want = netns_cookie;
	return want != 0 && bpf_get_netns_cookie(ctx) != want;
}

static __always_inline int is_mapped(__u32 a, __u32 b, __u32 c)
{
	return a == 0 && b == 0 && c == bpf_htonl(0xffff);
}

// record stores {addr, port, cgroup} by the socket's cookie in m.
static __always_inline void record(void *m, struct bpf_sock_addr *ctx, struct origin *o)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	o->cgroup_id = bpf_get_current_cgroup_id();
	bpf_map_update_elem(m, &cookie, o, BPF_ANY);
}

SEC("cgroup/connect4")
int av_connect4(struct bpf_sock_addr *ctx)
{
	__u32 type = ctx->type;
	__u32 ip = ctx->user_ip4;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u32 new_ip;
	__u16 new_port;
	int udp = 0;

	if (foreign_netns(ctx))
		return 0;
	if (type == SOCK_STREAM && (port == 80 || port == 443)) {
		new_ip = transparent4_ip;
		new_port = transparent4_port;
	} else if (type == SOCK_STREAM && port == 53) {
		new_ip = dns4_ip;
		new_port = dns4_port;
	} else if (type == SOCK_DGRAM && port == 53) {
		new_ip = dns4_ip;
		new_port = dns4_port;
		udp = 1;
	} else {
		return 0;
	}
	if (new_port == 0)
		return 0;

	struct origin o = {};
	map4(o.addr, ip);
	o.port = port;
	if (udp)
		record(&dns_by_cookie, ctx, &o);
	else
		record(&conn_by_cookie, ctx, &o);
	ctx->user_ip4 = new_ip;
	ctx->user_port = new_port;
	return 1;
}

SEC("cgroup/connect6")
int av_connect6(struct bpf_sock_addr *ctx)
{
	__u32 type = ctx->type;
	__u32 a = rd(ctx->user_ip6[0]), b = rd(ctx->user_ip6[1]), c = rd(ctx->user_ip6[2]), d = rd(ctx->user_ip6[3]);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u32 n0, n1, n2, n3;
	__u16 new_port;
	int udp = 0;
	int dns;
	int v4 = is_mapped(a, b, c);

	if (foreign_netns(ctx))
		return 0;
	if (type == SOCK_STREAM && (port == 80 || port == 443)) {
		dns = 0;
	} else if (type == SOCK_STREAM && port == 53) {
		dns = 1;
	} else if (type == SOCK_DGRAM && port == 53) {
		dns = 1;
		udp = 1;
	} else {
		return 0;
	}
	if (v4) {
		n0 = 0;
		n1 = 0;
		n2 = bpf_htonl(0xffff);
		n3 = dns ? dns4_ip : transparent4_ip;
		new_port = dns ? dns4_port : transparent4_port;
	} else if (dns) {
		n0 = dns6_ip[0];
		n1 = dns6_ip[1];
		n2 = dns6_ip[2];
		n3 = dns6_ip[3];
		new_port = dns6_port;
	} else {
		n0 = transparent6_ip[0];
		n1 = transparent6_ip[1];
		n2 = transparent6_ip[2];
		n3 = transparent6_ip[3];
		new_port = transparent6_port;
	}
	if (new_port == 0)
		return 0;

	struct origin o = {};
	copy6(o.addr, a, b, c, d);
	o.port = port;
	if (udp)
		record(&dns_by_cookie, ctx, &o);
	else
		record(&conn_by_cookie, ctx, &o);
	ctx->user_ip6[0] = n0;
	ctx->user_ip6[1] = n1;
	ctx->user_ip6[2] = n2;
	ctx->user_ip6[3] = n3;
	ctx->user_port = new_port;
	return 1;
}

SEC("cgroup/sendmsg4")
int av_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u32 ip = ctx->user_ip4;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	__u16 new_port = dns4_port;

	if (foreign_netns(ctx) || port != 53 || new_port == 0)
		return 0;
	struct origin o = {};
	map4(o.addr, ip);
	o.port = port;
	record(&dns_by_cookie, ctx, &o);
	ctx->user_ip4 = dns4_ip;
	ctx->user_port = new_port;
	return 1;
}

SEC("cgroup/sendmsg6")
int av_sendmsg6(struct bpf_sock_addr *ctx)
{
	__u32 a = rd(ctx->user_ip6[0]), b = rd(ctx->user_ip6[1]), c = rd(ctx->user_ip6[2]), d = rd(ctx->user_ip6[3]);
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	int v4 = is_mapped(a, b, c);
	__u16 new_port = v4 ? dns4_port : dns6_port;

	if (foreign_netns(ctx) || port != 53 || new_port == 0)
		return 0;
	struct origin o = {};
	copy6(o.addr, a, b, c, d);
	o.port = port;
	record(&dns_by_cookie, ctx, &o);
	if (v4) {
		ctx->user_ip6[3] = dns4_ip;
	} else {
		ctx->user_ip6[0] = dns6_ip[0];
		ctx->user_ip6[1] = dns6_ip[1];
		ctx->user_ip6[2] = dns6_ip[2];
		ctx->user_ip6[3] = dns6_ip[3];
	}
	ctx->user_port = new_port;
	return 1;
}

SEC("cgroup/recvmsg4")
int av_recvmsg4(struct bpf_sock_addr *ctx)
{
	__u32 ip = ctx->user_ip4;
	__u16 port = (__u16)ctx->user_port;

	if (dns4_port == 0 || ip != dns4_ip || port != dns4_port)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct origin *o = bpf_map_lookup_elem(&dns_by_cookie, &cookie);
	if (!o)
		return 1;
	__u32 orig;
	__builtin_memcpy(&orig, o->addr + 12, 4);
	ctx->user_ip4 = orig;
	ctx->user_port = bpf_htons(o->port);
	return 1;
}

SEC("cgroup/recvmsg6")
int av_recvmsg6(struct bpf_sock_addr *ctx)
{
	__u32 a = rd(ctx->user_ip6[0]), b = rd(ctx->user_ip6[1]), c = rd(ctx->user_ip6[2]), d = rd(ctx->user_ip6[3]);
	__u16 port = (__u16)ctx->user_port;
	int match;

	if (is_mapped(a, b, c))
		match = dns4_port != 0 && d == dns4_ip && port == dns4_port;
	else
		match = dns6_port != 0 && a == dns6_ip[0] && b == dns6_ip[1] && c == dns6_ip[2] &&
			d == dns6_ip[3] && port == dns6_port;
	if (!match)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct origin *o = bpf_map_lookup_elem(&dns_by_cookie, &cookie);
	if (!o)
		return 1;
	__u32 w0, w1, w2, w3;
	__builtin_memcpy(&w0, o->addr, 4);
	__builtin_memcpy(&w1, o->addr + 4, 4);
	__builtin_memcpy(&w2, o->addr + 8, 4);
	__builtin_memcpy(&w3, o->addr + 12, 4);
	ctx->user_ip6[0] = w0;
	ctx->user_ip6[1] = w1;
	ctx->user_ip6[2] = w2;
	ctx->user_ip6[3] = w3;
	ctx->user_port = bpf_htons(o->port);
	return 1;
}

SEC("sockops")
int av_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct origin *o = bpf_map_lookup_elem(&conn_by_cookie, &cookie);
	if (!o)
		return 1;
	struct origin val = *o;

	__u32 family = skops->family;
	__u32 lport = skops->local_port;
	__u32 rport = skops->remote_port;
	struct flow f = {};
	if (family == AF_INET) {
		map4(f.src, rd(skops->local_ip4));
		map4(f.dst, rd(skops->remote_ip4));
	} else {
		copy6(f.src, rd(skops->local_ip6[0]), rd(skops->local_ip6[1]), rd(skops->local_ip6[2]), rd(skops->local_ip6[3]));
		copy6(f.dst, rd(skops->remote_ip6[0]), rd(skops->remote_ip6[1]), rd(skops->remote_ip6[2]), rd(skops->remote_ip6[3]));
	}
	f.sport = (__u16)lport;
	// remote_port is in network byte order, in the low or (older kernels)
	// the high half of the word.
	__u16 be = (rport & 0xffff) ? (__u16)(rport & 0xffff) : (__u16)(rport >> 16);
	f.dport = bpf_ntohs(be);
	bpf_map_update_elem(&conn_by_flow, &f, &val, BPF_ANY);
	bpf_map_delete_elem(&conn_by_cookie, &cookie);
	return 1;
}

SEC("cgroup_skb/egress")
int av_egress(struct __sk_buff *skb)
{
	__u32 proto = skb->protocol;
	struct src_key k = {};
	__u32 l4;

	if (proto == bpf_htons(ETH_P_IP)) {
		__u8 hdr[20];
		if (dns4_port == 0 || bpf_skb_load_bytes(skb, 0, hdr, sizeof(hdr)) < 0)
			return 1;
		__u32 daddr;
		__builtin_memcpy(&daddr, hdr + 16, 4);
		if (hdr[9] != PROTO_UDP || daddr != dns4_ip)
			return 1;
		__u32 saddr;
		__builtin_memcpy(&saddr, hdr + 12, 4);
		map4(k.addr, saddr);
		l4 = (hdr[0] & 0x0f) * 4;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		__u8 hdr[40];
		if (dns6_port == 0 || bpf_skb_load_bytes(skb, 0, hdr, sizeof(hdr)) < 0)
			return 1;
		__u32 d[4];
		__builtin_memcpy(d, hdr + 24, 16);
		if (hdr[6] != PROTO_UDP || d[0] != dns6_ip[0] || d[1] != dns6_ip[1] || d[2] != dns6_ip[2] ||
		    d[3] != dns6_ip[3])
			return 1;
		__builtin_memcpy(k.addr, hdr + 8, 16);
		l4 = 40;
	} else {
		return 1;
	}
	__u16 ports[2];
	if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)) < 0)
		return 1;
	if (ports[1] != (proto == bpf_htons(ETH_P_IP) ? dns4_port : dns6_port))
		return 1;
	__u64 cookie = bpf_get_socket_cookie(skb);
	struct origin *o = bpf_map_lookup_elem(&dns_by_cookie, &cookie);
	if (!o)
		return 1;
	struct origin val = *o;
	k.port = bpf_ntohs(ports[0]);
	bpf_map_update_elem(&dns_by_src, &k, &val, BPF_ANY);
	return 1;
}
