// SPDX-License-Identifier: GPL-2.0
// attrib.bpf.c: who connects, recorded when they connect (snitch issue 14).
//
// Cgroup hooks on socket creation, connect() and UDP sendmsg() record, per socket cookie and
// destination, the task that did it: tgid, tid, uid, comm, the start time of its process, and
// the device + inode of its executable at that moment (plus the executable's path, once per
// inode). snitchd joins this with the cookie sock_diag returns for a queued packet, so a program
// that connects and then execve()s another binary, a child that connects on its parent's socket,
// an io_uring fixed-file socket and a process that sent one datagram and exited are all named
// for what they were when they connected.
//
// A sock_ops program copies, in tcp_connect() (the source port bound, the SYN not yet built), a
// connecting TCP socket's record under the flow's own 4-tuple (map `conns`), so snitchd names the
// queued SYN's sender with one map lookup and no sock_diag request (issue 21).
//
// The fast path (below, `fastpath.py`) is the one exception to "record only": sock_ops marks a
// connect snitchd kept a rule's allow for, and the socket filter `snitch_fast` (not a cgroup
// hook: iptables runs it on the SYN) passes that SYN. The cgroup hooks still only record.
//
// Every cgroup program returns 1 (allow): they record only, and never decide. A failed map update
// loses a record (snitchd then falls back to sock_diag + /proc); it never refuses a connection.
//
// Built with clang -target bpf against libbpf's headers. The kernel structures below are
// declared locally with preserve_access_index (CO-RE): libbpf relocates their field offsets
// against the running kernel's BTF (/sys/kernel/btf/vmlinux) at load time, so the object needs
// no vmlinux.h and is not tied to the kernel it was compiled on.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

#define PATH_BYTES 512 // leaf-first NUL-separated components; the reader reverses them
#define NAME_MAX_READ 256
#define PATH_DEPTH 24

#define HOOK_SOCK_CREATE 1
#define HOOK_CONNECT 2
#define HOOK_SENDMSG 3

// -- kernel structures, only the fields read (CO-RE relocates them) -------------------------
struct qstr {
	union {
		struct {
			unsigned int hash;
			unsigned int len;
		};
		unsigned long long hash_len;
	};
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
} __attribute__((preserve_access_index));

struct vfsmount {
	struct dentry *mnt_root;
} __attribute__((preserve_access_index));

struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
} __attribute__((preserve_access_index));

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
} __attribute__((preserve_access_index));

struct super_block {
	unsigned int s_dev;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct file {
	struct path f_path;
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct mm_struct {
	struct file *exe_file;
} __attribute__((preserve_access_index));

struct task_struct {
	struct mm_struct *mm;
	struct task_struct *group_leader;
	unsigned long long start_boottime;
	unsigned long long self_exec_id;
} __attribute__((preserve_access_index));

typedef struct {
	unsigned int val;
} __attribute__((preserve_access_index)) kuid_t;

struct socket {
	short type;
} __attribute__((preserve_access_index));

struct socket_alloc {
	struct socket socket;
	struct inode vfs_inode;
} __attribute__((preserve_access_index));

struct sock {
	struct socket *sk_socket;
	kuid_t sk_uid;
} __attribute__((preserve_access_index));

// -- maps --------------------------------------------------------------------------------------
// The key of a record. Two kinds, told apart by `kind`:
//   KEY_SOCKET  cookie = the socket's cookie; addr/port = where it connected or sent to (all
//               zero: its latest user, or its creator);
//   KEY_PORT    cookie = the netns cookie; addr/port = destination; `sport` = the socket's
//               bound port: the sender among SO_REUSEPORT siblings, which sock_diag cannot tell,
//               and the sender of a datagram whose socket is gone (its process exited). UDP
//               sendmsg() binds an unbound socket (inet_send_prepare) before this hook runs.
// IPv4 (and IPv4-mapped IPv6) addresses are kept as family AF_INET in addr[0].
struct flow_key {
	__u64 cookie;
	__u32 addr[4];
	__u16 port; // network byte order, as the hook sees it
	__u16 family;
	__u16 sport; // host byte order
	__u16 kind;
};

#define KEY_SOCKET 0
#define KEY_PORT 1

struct owner {
	__u32 tgid;
	__u32 tid;
	__u32 uid;
	__u32 gid;
	__u64 start_ns; // the process's (group leader's) start, CLOCK_BOOTTIME ns: /proc stat field 22
	__u64 ino;      // the executable's inode, 0 when unknown (a kernel thread)
	__u32 dev;      // its device, kernel encoding (major << 20 | minor)
	__u32 hook;     // HOOK_*
	__u64 when_ns;  // bpf_ktime_get_ns() at the hook
	char comm[16];
	__u64 exec_id; // the task's execs so far (self_exec_id): an exec of the same file is another
};

struct exe_key {
	__u64 ino;
	__u32 dev;
	__u32 pad;
};

struct exe_path {
	__u32 len;   // bytes used in path
	__u32 depth; // components read; PATH_DEPTH means the walk was cut short
	char path[PATH_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct owner);
} owners SEC(".maps");

// A connecting TCP socket's record under its own flow (issue 21): what the packet loop reads
// for a queued SYN, with no sock_diag request. Written by the sock_ops program at
// BPF_SOCK_OPS_TCP_CONNECT_CB (the source port is bound by then, the SYN not yet built), copied
// from the connect hook's record for the socket's cookie; deleted when the socket leaves
// SYN_SENT (BPF_SOCK_OPS_STATE_CB: established, or closed before the kernel unhashes it and
// frees the 4-tuple), so a record lives only while its socket holds the 4-tuple, which no other
// socket can hold then, and only while its SYN may still be queued (the map stays small).
struct conn_key {
	__u64 netns;  // the netns cookie
	__u32 src[4]; // IPv4 (and IPv4-mapped IPv6) as AF_INET in [0], network byte order
	__u32 dst[4];
	__u16 sport; // host byte order
	__u16 dport; // host byte order
	__u16 family;
	__u16 pad;
};

struct conn {
	struct owner owner; // the connect hook's record (or the socket's latest user's)
	__u64 cookie;       // the socket's
	__u64 inode;        // its inode, as sock_diag gives it (0: no file)
	__u64 when_ns;      // bpf_ktime_get_ns() at tcp_connect()
	__u32 uid;          // sk_uid, as sock_diag gives it
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384); // sockets in SYN_SENT; past that the oldest go (sock_diag then)
	__type(key, struct conn_key);
	__type(value, struct conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct exe_key);
	__type(value, struct exe_path);
} exes SEC(".maps");

// A scratch value per CPU: struct exe_path is too large for the 512-byte BPF stack.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exe_path);
} scratch SEC(".maps");

// -- the fast path: a kernel verdict for a TCP connect a rule already allowed (issue 21) --------
// snitchd writes, after it allowed a flow by a rule whose outcome depends on nothing but the
// process and the destination, the process's identity (tgid, start time, exec count,
// executable, socket uid) and the destination under the current generation. The sock_ops
// program, in tcp_connect(), finds a connect of that very process to that very destination and
// marks its socket (`fast_socks`); the queue chain's socket filter (`snitch_fast`) passes that
// socket's SYN as allowed, and sends snitchd one event for its log. snitchd bumps the generation
// on every change of the held rules (a profile switch too) and on a reload: every entry then
// reads as stale, and the next connect is queued and decided again. While a rule is held whose
// match can change by itself (host names, lists, classes, interfaces, time), nothing is kept.
struct fast_key {
	__u64 start_ns;
	__u64 exec_id;
	__u64 ino;
	__u32 tgid;
	__u32 dev; // kernel encoding, as struct owner
	__u32 uid; // the socket's (sk_uid)
	__u16 dport; // host byte order
	__u16 family;
	__u32 dst[4];
};

struct fast_rule {
	__u64 gen;
	__u64 slot; // snitchd's: which decision the event logs
};

struct fast_sock {
	__u32 dst[4];
	__u16 dport; // host byte order
	__u16 family;
	__u32 pad;
	__u64 gen;
	__u64 slot;
};

// The event for the log: one per SYN passed (a retransmission too; snitchd folds repeats).
struct fast_event {
	__u64 slot;
	__u32 src[4];
	__u32 dst[4];
	__u16 sport; // host byte order
	__u16 dport;
	__u16 family;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct fast_key);
	__type(value, struct fast_rule);
} fast_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} fast_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); // the socket's cookie
	__type(value, struct fast_sock);
} fast_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} fast_log SEC(".maps");

static __always_inline int fast_current(__u64 gen)
{
	__u32 zero = 0;
	__u64 *now = bpf_map_lookup_elem(&fast_gen, &zero);
	return now && *now == gen && gen != 0;
}

// -- helpers -----------------------------------------------------------------------------------
struct walk {
	struct dentry *dentry;
	struct mount *mnt;
	struct exe_path *out;
	__u32 off;
	__u32 depth;
};

// One step up the path, as a bpf_loop() callback: the verifier checks it once, where an
// unrolled loop of PATH_DEPTH steps took it ~770k instructions (near its 1M limit).
static long walk_step(__u32 i, void *data)
{
	struct walk *w = data;
	// Plain locals: BPF_CORE_READ(w->mnt, ...) would ask CO-RE to relocate struct walk too.
	struct mount *mnt = w->mnt;
	struct dentry *dentry = w->dentry;
	struct dentry *root = BPF_CORE_READ(mnt, mnt.mnt_root);
	if (dentry == root) {
		struct mount *parent = BPF_CORE_READ(mnt, mnt_parent);
		if (parent == mnt)
			return 1; // the root of the mount tree
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = parent;
		return 0;
	}
	struct dentry *up = BPF_CORE_READ(dentry, d_parent);
	if (up == dentry)
		return 1;
	const unsigned char *name = BPF_CORE_READ(dentry, d_name.name);
	__u32 off = w->off;
	if (off >= PATH_BYTES / 2)
		return 1; // a longer path is left cut short; snitchd checks what it gets by stat
	long n = bpf_probe_read_kernel_str(&w->out->path[off & (PATH_BYTES / 2 - 1)],
					   NAME_MAX_READ, name);
	if (n <= 0)
		return 1;
	w->off = off + n;
	w->depth++;
	w->dentry = up;
	return 0;
}

static __always_inline void remember_path(struct file *exe, struct exe_key *key)
{
	if (bpf_map_lookup_elem(&exes, key))
		return; // known inode: the walk runs once per executable, not per connect
	__u32 zero = 0;
	struct exe_path *out = bpf_map_lookup_elem(&scratch, &zero);
	if (!out)
		return;
	struct vfsmount *vfs = BPF_CORE_READ(exe, f_path.mnt);
	struct walk w = {
		.dentry = BPF_CORE_READ(exe, f_path.dentry),
		.mnt = (struct mount *)((char *)vfs - bpf_core_field_offset(struct mount, mnt)),
		.out = out,
	};
	bpf_loop(PATH_DEPTH * 2, walk_step, &w, 0);
	out->len = w.off;
	out->depth = w.depth;
	bpf_map_update_elem(&exes, key, out, BPF_NOEXIST);
}

static __always_inline void record(struct flow_key *key, __u32 hook)
{
	struct owner o = {};
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	o.tgid = pid_tgid >> 32;
	o.tid = (__u32)pid_tgid;
	o.uid = (__u32)uid_gid;
	o.gid = uid_gid >> 32;
	o.hook = hook;
	o.when_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(o.comm, sizeof(o.comm));

	struct task_struct *task = bpf_get_current_task_btf();
	o.start_ns = BPF_CORE_READ(task, group_leader, start_boottime);
	// Every thread of a process was made after its last exec, and copied the count then.
	o.exec_id = BPF_CORE_READ(task, self_exec_id);
	struct file *exe = BPF_CORE_READ(task, mm, exe_file);
	if (exe) {
		struct exe_key ek = {};
		ek.ino = BPF_CORE_READ(exe, f_inode, i_ino);
		ek.dev = BPF_CORE_READ(exe, f_inode, i_sb, s_dev);
		o.ino = ek.ino;
		o.dev = ek.dev;
		remember_path(exe, &ek);
	}
	bpf_map_update_elem(&owners, key, &o, BPF_ANY);
	if (hook != HOOK_SOCK_CREATE) {
		// The socket's latest user, whatever the destination: found when the packet's
		// destination differs from the one given to connect() (DNAT in OUTPUT).
		struct flow_key any = {.cookie = key->cookie};
		bpf_map_update_elem(&owners, &any, &o, BPF_ANY);
	}
}

// Also under KEY_PORT, for a socket already bound to a port (SO_REUSEPORT siblings are).
static __always_inline void record_port(struct bpf_sock_addr *ctx, struct flow_key *key)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return;
	__u16 sport = (__u16)sk->src_port;
	if (!sport)
		return;
	struct owner *o = bpf_map_lookup_elem(&owners, key);
	if (!o)
		return;
	struct flow_key by_port = *key;
	by_port.cookie = bpf_get_netns_cookie(ctx);
	by_port.sport = sport;
	by_port.kind = KEY_PORT;
	bpf_map_update_elem(&owners, &by_port, o, BPF_ANY);
}

static __always_inline void record_addr4(struct bpf_sock_addr *ctx, __u32 hook)
{
	struct flow_key key = {};
	key.cookie = bpf_get_socket_cookie(ctx);
	key.port = (__u16)ctx->user_port;
	key.family = AF_INET;
	key.addr[0] = ctx->user_ip4;
	record(&key, hook);
	record_port(ctx, &key);
}

static __always_inline void record_addr6(struct bpf_sock_addr *ctx, __u32 hook)
{
	struct flow_key key = {};
	key.cookie = bpf_get_socket_cookie(ctx);
	key.port = (__u16)ctx->user_port;
	__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1];
	__u32 a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
	if (a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xffff)) {
		key.family = AF_INET; // ::ffff:a.b.c.d leaves as IPv4
		key.addr[0] = a3;
	} else {
		key.family = AF_INET6;
		key.addr[0] = a0;
		key.addr[1] = a1;
		key.addr[2] = a2;
		key.addr[3] = a3;
	}
	record(&key, hook);
	record_port(ctx, &key);
}

// -- the hooks: every one returns 1 (allow) ----------------------------------------------------
SEC("cgroup/sock_create")
int snitch_sock_create(struct bpf_sock *sk)
{
	struct flow_key key = {};
	key.cookie = bpf_get_socket_cookie(sk);
	// Only the first (the creator): a later connect() or sendmsg() writes its own records.
	if (!bpf_map_lookup_elem(&owners, &key))
		record(&key, HOOK_SOCK_CREATE);
	return 1;
}

SEC("cgroup/connect4")
int snitch_connect4(struct bpf_sock_addr *ctx)
{
	record_addr4(ctx, HOOK_CONNECT);
	return 1;
}

SEC("cgroup/connect6")
int snitch_connect6(struct bpf_sock_addr *ctx)
{
	record_addr6(ctx, HOOK_CONNECT);
	return 1;
}

SEC("cgroup/sendmsg4")
int snitch_sendmsg4(struct bpf_sock_addr *ctx)
{
	record_addr4(ctx, HOOK_SENDMSG);
	return 1;
}

SEC("cgroup/sendmsg6")
int snitch_sendmsg6(struct bpf_sock_addr *ctx)
{
	record_addr6(ctx, HOOK_SENDMSG);
	return 1;
}

// -- TCP: the connect record under the socket's own flow ----------------------------------------
// The socket's 4-tuple as the queued SYN carries it; 0 for a family we do not record.
static __always_inline int conn_key_of(struct bpf_sock_ops *ctx, struct conn_key *key)
{
	key->netns = bpf_get_netns_cookie(ctx);
	key->sport = (__u16)ctx->local_port;
	key->dport = (__u16)bpf_ntohl(ctx->remote_port);
	if (ctx->family == AF_INET) {
		key->family = AF_INET;
		key->src[0] = ctx->local_ip4;
		key->dst[0] = ctx->remote_ip4;
		return 1;
	}
	if (ctx->family != AF_INET6)
		return 0;
	__u32 r0 = ctx->remote_ip6[0], r1 = ctx->remote_ip6[1];
	__u32 r2 = ctx->remote_ip6[2], r3 = ctx->remote_ip6[3];
	if (r0 == 0 && r1 == 0 && r2 == bpf_htonl(0xffff)) {
		key->family = AF_INET; // a dual-stack socket's IPv4 flow leaves as IPv4
		key->src[0] = ctx->local_ip6[3];
		key->dst[0] = r3;
		return 1;
	}
	key->family = AF_INET6;
	key->src[0] = ctx->local_ip6[0];
	key->src[1] = ctx->local_ip6[1];
	key->src[2] = ctx->local_ip6[2];
	key->src[3] = ctx->local_ip6[3];
	key->dst[0] = r0;
	key->dst[1] = r1;
	key->dst[2] = r2;
	key->dst[3] = r3;
	return 1;
}

static __always_inline void record_conn(struct bpf_sock_ops *ctx)
{
	struct conn_key key = {};
	if (!conn_key_of(ctx, &key))
		return;
	// The record Recorder.find would read for this flow: who connected the socket there, else
	// the socket's latest user or its creator.
	struct flow_key fk = {};
	fk.cookie = bpf_get_socket_cookie(ctx);
	fk.family = key.family;
	fk.port = bpf_htons(key.dport);
	fk.addr[0] = key.dst[0];
	fk.addr[1] = key.dst[1];
	fk.addr[2] = key.dst[2];
	fk.addr[3] = key.dst[3];
	struct owner *o = bpf_map_lookup_elem(&owners, &fk);
	if (!o) {
		struct flow_key any = {.cookie = fk.cookie};
		o = bpf_map_lookup_elem(&owners, &any);
	}
	if (!o)
		return; // never saw it: snitchd asks sock_diag
	struct bpf_sock *bsk = ctx->sk;
	if (!bsk)
		return;
	struct sock *sk = (struct sock *)bpf_skc_to_tcp_sock(bsk);
	if (!sk)
		return;
	// Told when the socket leaves SYN_SENT, or no record: one left behind could name a later
	// socket. (The flag is only ever set: another program may want it too.)
	if (bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG))
		return;
	struct conn c = {};
	c.owner = *o;
	c.cookie = fk.cookie;
	c.when_ns = bpf_ktime_get_ns();
	c.uid = BPF_CORE_READ(sk, sk_uid.val);
	struct socket *sock = BPF_CORE_READ(sk, sk_socket);
	if (sock)
		c.inode = BPF_CORE_READ((struct socket_alloc *)sock, vfs_inode.i_ino);
	if (bpf_map_update_elem(&conns, &key, &c, BPF_ANY))
		bpf_map_delete_elem(&conns, &key); // (no entry is the safe failure)
	struct fast_key fk2 = {
		.start_ns = o->start_ns,
		.exec_id = o->exec_id,
		.ino = o->ino,
		.tgid = o->tgid,
		.dev = o->dev,
		.uid = c.uid,
		.dport = key.dport,
		.family = key.family,
	};
	__builtin_memcpy(fk2.dst, key.dst, sizeof(fk2.dst));
	struct fast_rule *rule = bpf_map_lookup_elem(&fast_rules, &fk2);
	if (!rule || !fast_current(rule->gen))
		return;
	struct fast_sock fs = {.dport = key.dport, .family = key.family, .gen = rule->gen,
			       .slot = rule->slot};
	__builtin_memcpy(fs.dst, key.dst, sizeof(fs.dst));
	bpf_map_update_elem(&fast_socks, &fk.cookie, &fs, BPF_ANY);
}

static __always_inline void forget_conn(struct bpf_sock_ops *ctx)
{
	struct conn_key key = {};
	if (!conn_key_of(ctx, &key))
		return;
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	if (c && c->cookie == bpf_get_socket_cookie(ctx))
		bpf_map_delete_elem(&conns, &key);
}

SEC("sockops")
int snitch_sockops(struct bpf_sock_ops *ctx)
{
	if (ctx->op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		// Whatever this socket's earlier connect was allowed, this one is judged afresh.
		__u64 cookie = bpf_get_socket_cookie(ctx);
		bpf_map_delete_elem(&fast_socks, &cookie);
		record_conn(ctx);
	} else if (ctx->op == BPF_SOCK_OPS_STATE_CB && ctx->args[0] == BPF_TCP_SYN_SENT) {
		__u64 cookie = bpf_get_socket_cookie(ctx);
		bpf_map_delete_elem(&fast_socks, &cookie);
		forget_conn(ctx); // established, refused or closed: its SYN has been decided
	}
	return 1;
}

// The fast path's match (mangle, before the queue rule, TCP SYNs only): 1 for the SYN of a
// socket sock_ops marked, to the destination it was marked for, in the generation it was
// marked in, once its event is in the log's ring; 0 otherwise (the SYN is queued).
SEC("socket")
int snitch_fast(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	if (!cookie)
		return 0;
	struct fast_sock *fs = bpf_map_lookup_elem(&fast_socks, &cookie);
	if (!fs || !fast_current(fs->gen))
		return 0;
	struct fast_event ev = {.slot = fs->slot};
	__u8 first, next;
	__u32 off;
	if (bpf_skb_load_bytes(skb, 0, &first, 1))
		return 0;
	if (first >> 4 == 4) {
		if (bpf_skb_load_bytes(skb, 9, &next, 1) || bpf_skb_load_bytes(skb, 12, ev.src, 4) ||
		    bpf_skb_load_bytes(skb, 16, ev.dst, 4))
			return 0;
		ev.family = AF_INET;
		off = (first & 0xF) * 4;
	} else if (first >> 4 == 6) {
		if (bpf_skb_load_bytes(skb, 6, &next, 1) || bpf_skb_load_bytes(skb, 8, ev.src, 16) ||
		    bpf_skb_load_bytes(skb, 24, ev.dst, 16))
			return 0;
		ev.family = AF_INET6;
		off = 40; // an extension header: not TCP next, queued
	} else {
		return 0;
	}
	__u16 ports[2];
	if (next != 6 || bpf_skb_load_bytes(skb, off, ports, 4))
		return 0;
	ev.sport = bpf_ntohs(ports[0]);
	ev.dport = bpf_ntohs(ports[1]);
	if (ev.family != fs->family || ev.dport != fs->dport || ev.dst[0] != fs->dst[0] ||
	    ev.dst[1] != fs->dst[1] || ev.dst[2] != fs->dst[2] || ev.dst[3] != fs->dst[3])
		return 0;
	if (bpf_ringbuf_output(&fast_log, &ev, sizeof(ev), 0))
		return 0; // the log's ring is full: queued, decided and logged as any other
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
