// SPDX-License-Identifier: GPL-2.0
// sockets.bpf.c: what did snitch decide for this packet's socket? (socket filters run by
// iptables' bpf match, `netfilter.SOCKET_CHAIN`).
//
// snitch keeps a verdict on the flow's conntrack entry, and a conntrack entry is a tuple, not a
// socket. A TCP SYN is always decided again (netfilter._decided_lines), but a datagram has no
// first packet to tell a new socket by: a socket bound to the local port of a UDP flow still in
// conntrack, sending to the same place, would pass (or fail) on that flow's verdict. So every
// non-TCP packet of a decided flow comes here, and the program answers 1 ("queue it: snitchd
// decides this socket") unless its socket is one snitchd gave a verdict for, to that
// destination.
//
// What was decided is learnt from the verdict itself: snitchd gives every verdict as NF_REPEAT
// with its mark on the packet (ALLOW, DENY or REJECT), so the decided packet comes through here
// again, carrying it, and its socket's cookie is recorded with the destination and the verdict.
// No user can put those marks on a packet (SO_MARK needs CAP_NET_ADMIN). A socket cookie is
// never reused, so a record cannot outlive its socket into another's. The map is an LRU: a record evicted (past
// 65,536 decided sockets and destinations) costs one more decision of that socket, by the same
// rules.
//
// Two live sockets can share a flow (both bind the port with SO_REUSEADDR, as mDNS does, and
// send to the same place): one conntrack entry, two sockets, each decided. The entry holds the
// last verdict given, so a user's denied socket joining a service's port made the service's
// datagrams fail there. So one program per verdict answers whether the socket's recorded
// verdict is that one: the rules pass a packet whose socket's verdict is the entry's, and set
// the entry to the socket's own verdict where they differ. Every datagram is judged by its own
// socket's verdict.
//
// And a verdict must be for the socket that sent the packet. snitchd names a queued datagram's
// sender by its tuple (sock_diag), and two sockets sharing a port match the same tuple: the
// kernel answers with the better match (a connected socket), so a user's unconnected socket on
// a service's shared port was named as the service, and its datagram passed on the service's
// allow. So just before each verdict for a datagram, snitchd writes the uid of the socket it
// named under the flow's tuple (map `named`, pinned for the readers); the verdict's repeat is
// dropped when the socket that sent it has another uid (`snitch_other_socket`), and nothing is
// recorded for it. The kernel acts on a verdict in the very call that gives it, so the entry
// read is the one written for it.
//
// That check alone made the better match a denial of service: a user's socket connected to
// where a service's unconnected one sends (mDNS) was named for each of the service's datagrams,
// and each was dropped, for as long as the user held the port. So the socket of each datagram
// sent to the queue is noted under its flow (map `queued`: its cookie and uid), and snitchd
// names that socket when sock_diag's answer is another. It is the last datagram queued on the
// flow, maybe not the one snitchd reads: a datagram of another socket on the flow queued in
// between takes its place. snitchd then names that other socket, and the check above drops the
// datagram, as before; a note can make a datagram fail, never pass on another's verdict. Notes
// are taken after every limit: what a user sends past one never reaches them.
//
// The key is the socket and where the packet goes (address, and the port for UDP and UDP-Lite;
// the local port is the socket's own). A packet carrying a verdict answers 0 whatever happens
// (it must never go back to the queue). A packet without a socket (forwarded, or sent by the
// kernel without one) answers 0: there is nothing to tell apart, its flow's verdict stands. A
// packet whose headers cannot be read here (an IPv6 chain of more than EXT_MAX extension
// headers: a user can add one, a routing header) answers 1: snitchd reads it, and drops what it
// cannot read.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// netfilter.py's mark layout (tests/unit/test_netfilter.py checks they agree).
#define MARK_MASK 0xFFFF0000u
#define ALLOW_MARK 0x5A1A0000u
#define DENY_MARK 0x5A1D0000u
#define REJECT_MARK 0x5A1E0000u

// snitch_common.records.SYSTEM_UID_MAX: uids above it are users, limited.
#define SYSTEM_UID_MAX 999

#define PROTO_HOPOPTS 0
#define PROTO_UDP 17
#define PROTO_ROUTING 43
#define PROTO_DSTOPTS 60
#define PROTO_UDPLITE 136
#define EXT_MAX 4
#define NO_UID 0xFFFFFFFFu // `named`: snitchd named no socket (the kernel's packet): no check

struct socket_key {
	__u64 cookie;
	__u8 daddr[16]; // IPv4 in the first 4 bytes
	__u16 dport;    // network byte order; 0 but for UDP and UDP-Lite
	__u8 proto;
	__u8 pad[5];
};

// A datagram's flow, as snitchd's `socketmatch.NamedSockets` packs it.
struct flow_key {
	__u8 saddr[16]; // IPv4 in the first 4 bytes
	__u8 daddr[16];
	__u16 sport; // network byte order
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

// The socket of the last datagram sent to the queue on each flow (`socketmatch.QueuedSenders`).
struct sender {
	__u64 cookie;
	__u32 uid;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct flow_key);
	__type(value, struct sender);
} queued SEC(".maps");

// Whose socket snitchd named for the verdict it gives now: the socket's uid, or NO_UID.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct flow_key);
	__type(value, __u32);
} named SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct socket_key);
	__type(value, __u32); // the verdict's mark
} decided SEC(".maps");

// The per-user limit of datagrams sent to the queue (`new_flows_per_user`), as snitchd set it:
// one every interval_ns, up to burst_ns ahead (GCRA). interval_ns 0: no limit.
struct limit {
	__u64 interval_ns;
	__u64 burst_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct limit);
} limits SEC(".maps");

// Per uid, when its next datagram is due (the GCRA's theoretical arrival time).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} users SEC(".maps");

// What the drop rules dropped, for `snitchctl status` (`socketmatch.SocketMatch.dropped`).
#define DROPPED_OVER_LIMIT 0
#define DROPPED_OTHER_SOCKET 1

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

// 1, counted under `why`: the rule this program matches for drops the packet.
static __always_inline int drop(__u32 why)
{
	__u64 *count = bpf_map_lookup_elem(&dropped, &why);

	if (count)
		__sync_fetch_and_add(count, 1);
	return 1;
}

static __always_inline int is_extension(__u8 next)
{
	return next == PROTO_HOPOPTS || next == PROTO_ROUTING || next == PROTO_DSTOPTS;
}

// The destination and protocol of the packet (its data starts at the IP header), and with
// `flow` the whole flow of a UDP or UDP-Lite one (flow->proto stays 0 for others); nonzero
// when they cannot be read.
static __always_inline int read_headers(struct __sk_buff *skb, struct socket_key *key,
					struct flow_key *flow)
{
	__u8 first, next;
	__u32 off;

	if (bpf_skb_load_bytes(skb, 0, &first, 1))
		return -1;
	if (first >> 4 == 4) {
		if (bpf_skb_load_bytes(skb, 9, &next, 1) || bpf_skb_load_bytes(skb, 16, key->daddr, 4))
			return -1;
		if (flow && bpf_skb_load_bytes(skb, 12, flow->saddr, 4))
			return -1;
		off = (first & 0xF) * 4;
	} else if (first >> 4 == 6) {
		if (bpf_skb_load_bytes(skb, 6, &next, 1) || bpf_skb_load_bytes(skb, 24, key->daddr, 16))
			return -1;
		if (flow && bpf_skb_load_bytes(skb, 8, flow->saddr, 16))
			return -1;
		off = 40;
#pragma unroll
		for (int i = 0; i < EXT_MAX; i++) {
			__u8 ext[2];

			if (!is_extension(next))
				break;
			if (bpf_skb_load_bytes(skb, off, ext, 2))
				return -1;
			next = ext[0];
			off += (ext[1] + 1) * 8;
		}
		if (is_extension(next))
			return -1;
	} else {
		return -1;
	}
	key->proto = next;
	if (next != PROTO_UDP && next != PROTO_UDPLITE)
		return 0;
	if (bpf_skb_load_bytes(skb, off + 2, &key->dport, 2))
		return -1;
	if (flow) {
		if (bpf_skb_load_bytes(skb, off, &flow->sport, 2))
			return -1;
		__builtin_memcpy(flow->daddr, key->daddr, 16);
		flow->dport = key->dport;
		flow->proto = next;
	}
	return 0;
}

static __always_inline int read_key(struct __sk_buff *skb, struct socket_key *key)
{
	return read_headers(skb, key, 0);
}

// Note `cookie`'s socket (the packet's) as the sender of a datagram of `flow` on its way to the
// queue; nothing for other protocols (flow->proto 0): only datagrams share a tuple.
static __always_inline void note_sender(struct __sk_buff *skb, struct flow_key *flow,
					__u64 cookie)
{
	struct sender sender = {.cookie = cookie};

	if (!flow->proto)
		return;
	sender.uid = bpf_get_socket_uid(skb);
	bpf_map_update_elem(&queued, flow, &sender, BPF_ANY);
}

static __always_inline int is_verdict(struct __sk_buff *skb)
{
	__u32 mark = skb->mark & MARK_MASK;

	return mark == ALLOW_MARK || mark == DENY_MARK || mark == REJECT_MARK;
}

// 1: the packet's socket was never decided for where the packet goes (or that cannot be read);
// with `flow`, the packet's flow as `read_headers` reads it.
static __always_inline int undecided(struct __sk_buff *skb, struct socket_key *key,
				     struct flow_key *flow)
{
	if (read_headers(skb, key, flow))
		return 1;
	return bpf_map_lookup_elem(&decided, key) ? 0 : 1;
}

// The match of the queue rule: 1 to queue the packet (its sender noted).
SEC("socket")
int snitch_undecided_socket(struct __sk_buff *skb)
{
	struct socket_key key = {};
	struct flow_key flow = {};
	__u32 verdict = skb->mark & MARK_MASK;

	key.cookie = bpf_get_socket_cookie(skb);
	if (is_verdict(skb)) {
		// A verdict coming back: never queued again, whatever can be read of it.
		if (key.cookie && !read_key(skb, &key))
			bpf_map_update_elem(&decided, &key, &verdict, BPF_ANY);
		return 0;
	}
	if (!key.cookie || !undecided(skb, &key, &flow))
		return 0;
	note_sender(skb, &flow, key.cookie); // nothing when the headers could not be read
	return 1;
}

// The match of the chain's last rule, for a packet of a flow without a verdict, which the
// rules after queue whole: it notes the packet's sender, and never matches.
SEC("socket")
int snitch_note_sender(struct __sk_buff *skb)
{
	struct socket_key key = {};
	struct flow_key flow = {};
	__u64 cookie = bpf_get_socket_cookie(skb);

	if (cookie && !read_headers(skb, &key, &flow))
		note_sender(skb, &flow, cookie);
	return 0;
}

// The match of the drop rule before it: 1 for a packet that would be queued but its user (a
// uid above SYSTEM_UID_MAX) is past the limit. Without it, a user binding the port of a decided
// flow, sending one datagram and closing, in a loop, had every datagram queued: the per-user
// limit of new flows (nft, netfilter.limit_script) does not count a decided flow's packets.
SEC("socket")
int snitch_over_limit(struct __sk_buff *skb)
{
	struct socket_key key = {};
	__u32 zero = 0, uid;
	struct limit *limit;
	__u64 now, due, *next;

	key.cookie = bpf_get_socket_cookie(skb);
	if (is_verdict(skb) || !key.cookie)
		return 0;
	uid = bpf_get_socket_uid(skb);
	limit = bpf_map_lookup_elem(&limits, &zero);
	if (uid <= SYSTEM_UID_MAX || !limit || !limit->interval_ns || !undecided(skb, &key, 0))
		return 0;
	now = bpf_ktime_get_ns();
	next = bpf_map_lookup_elem(&users, &uid);
	due = next && *next > now ? *next : now;
	if (due - now + limit->interval_ns > limit->burst_ns)
		return drop(DROPPED_OVER_LIMIT);
	due += limit->interval_ns;
	bpf_map_update_elem(&users, &uid, &due, BPF_ANY);
	return 0;
}

// The match of the drop rule first in the chain: 1 for a verdict's repeat of a datagram whose
// socket is not the one snitchd named (another uid's, on the same tuple).
SEC("socket")
int snitch_other_socket(struct __sk_buff *skb)
{
	struct socket_key key = {};
	struct flow_key flow = {};
	__u32 *uid;

	if (!is_verdict(skb) || !bpf_get_socket_cookie(skb) || read_headers(skb, &key, &flow) ||
	    !flow.proto)
		return 0;
	uid = bpf_map_lookup_elem(&named, &flow);
	if (uid && *uid != NO_UID && *uid != bpf_get_socket_uid(skb))
		return drop(DROPPED_OTHER_SOCKET);
	return 0;
}

// 1: the packet's socket was given `verdict` (a mark) for where the packet goes. A packet
// carrying a verdict, one without a socket, and one whose headers cannot be read answer 0.
static __always_inline int socket_was(struct __sk_buff *skb, __u32 verdict)
{
	struct socket_key key = {};
	__u32 *recorded;

	key.cookie = bpf_get_socket_cookie(skb);
	if (is_verdict(skb) || !key.cookie || read_key(skb, &key))
		return 0;
	recorded = bpf_map_lookup_elem(&decided, &key);
	return recorded && *recorded == verdict;
}

// The matches of the rules that keep the entry at the verdict of the socket sending.
SEC("socket")
int snitch_socket_allowed(struct __sk_buff *skb)
{
	return socket_was(skb, ALLOW_MARK);
}

SEC("socket")
int snitch_socket_denied(struct __sk_buff *skb)
{
	return socket_was(skb, DENY_MARK);
}

SEC("socket")
int snitch_socket_rejected(struct __sk_buff *skb)
{
	return socket_was(skb, REJECT_MARK);
}

char LICENSE[] SEC("license") = "GPL";
