/* ctpy.c: the hot paths of the conntrack package, compiled by cffi.
 *
 * Everything here runs without the GIL (cffi releases it around calls):
 * the dump loop (recv, nfct_nlmsg_parse, copy into flat records, filter),
 * request/acknowledge exchanges, batched deletes and statistics.  Python
 * never sees a pointer from libnetfilter_conntrack: the records are plain
 * structs declared in ctpy.h.
 *
 * libnetfilter_conntrack parses and builds the conntrack attributes; the
 * socket, the message headers and the kernel-side filter attributes (which
 * libnetfilter_conntrack 1.0.9 cannot express) are ours, built with libmnl.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <endian.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <netinet/in.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <libmnl/libmnl.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack_tcp.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack_sctp.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack_dccp.h>

#include "ctpy.h"

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif
#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif
#ifndef SO_MEMINFO
#define SO_MEMINFO 55
#endif

#define CTPY_RECV_BUF   (256 * 1024)
#define CTPY_SEND_CHUNK (128 * 1024)
#define CTPY_MSG_BUF    4096

struct ctpy_sock {
    int fd;
    uint32_t portid;
    uint32_t seq;
    uint32_t dump_seq;
    int dumping;
    int done;
    char *buf;
    size_t len;
    size_t off;
    int max_inflight;       /* requests per sendmsg whose acks fit rcvbuf */
    int overflow;           /* events: ENOBUFS seen, queue not yet drained */
    uint32_t drops_base;    /* events: SK_MEMINFO_DROPS at the last report */
    int dump_intr;          /* a message of this dump had NLM_F_DUMP_INTR */
};

/* What one queued acknowledgement costs in sk_rmem_alloc (skb truesize of
 * a 36-byte NLMSG_ERROR is ~768 bytes; keep a margin). */
#define CTPY_ACK_TRUESIZE 1024

/* ---- sockets ------------------------------------------------------- */

static int set_buf(int fd, int force_opt, int opt, int size)
{
    if (setsockopt(fd, SOL_SOCKET, force_opt, &size, sizeof(size)) == 0)
        return 0;
    /* Without CAP_NET_ADMIN the FORCE variant fails: take what rmem_max
     * allows. */
    return setsockopt(fd, SOL_SOCKET, opt, &size, sizeof(size));
}

static int open_here(int rcvbuf)
{
    int fd, one = 1;
    struct sockaddr_nl sa;

    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (fd < 0)
        return -errno;
    set_buf(fd, SO_RCVBUFFORCE, SO_RCVBUF, rcvbuf);
    set_buf(fd, SO_SNDBUFFORCE, SO_SNDBUF, 4 * CTPY_SEND_CHUNK);
    setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
    memset(&sa, 0, sizeof(sa));
    sa.nl_family = AF_NETLINK;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

struct ctpy_sock *ctpy_open(int netns_fd, int rcvbuf, int *err)
{
    struct ctpy_sock *s;
    struct sockaddr_nl sa;
    socklen_t salen = sizeof(sa);
    int fd;

    *err = 0;
    if (netns_fd >= 0) {
        /* setns() moves only this thread; move it back whatever happens. */
        int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (self < 0) {
            *err = errno;
            return NULL;
        }
        if (setns(netns_fd, CLONE_NEWNET) < 0) {
            *err = errno;
            close(self);
            return NULL;
        }
        fd = open_here(rcvbuf);
        if (setns(self, CLONE_NEWNET) < 0) {
            /* The thread is stuck in the wrong namespace: refuse to go on. */
            if (fd >= 0)
                close(fd);
            close(self);
            *err = -1;
            return NULL;
        }
        close(self);
    } else {
        fd = open_here(rcvbuf);
    }
    if (fd < 0) {
        *err = -fd;
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (s)
        s->buf = malloc(CTPY_RECV_BUF);
    if (!s || !s->buf) {
        free(s);
        close(fd);
        *err = ENOMEM;
        return NULL;
    }
    if (getsockname(fd, (struct sockaddr *)&sa, &salen) == 0)
        s->portid = sa.nl_pid;
    s->fd = fd;
    {
        int rb = 0;
        socklen_t rl = sizeof(rb);
        if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rb, &rl) < 0 || rb <= 0)
            rb = 212992;
        /* half the buffer, so replies queued meanwhile never tip it over */
        s->max_inflight = rb / 2 / CTPY_ACK_TRUESIZE;
        if (s->max_inflight < 1)
            s->max_inflight = 1;
    }
    s->seq = (uint32_t)getpid() ^ (uint32_t)(uintptr_t)s;
    s->done = 1;
    return s;
}

/* Bound every blocking recv (request/acknowledge exchanges, dumps): a
 * kernel that never answers makes recv fail with EAGAIN instead of hanging.
 * ms <= 0: wait forever. */
int ctpy_set_timeout(struct ctpy_sock *s, int ms)
{
    struct timeval tv = {0, 0};

    if (ms > 0) {
        tv.tv_sec = ms / 1000;
        tv.tv_usec = (ms % 1000) * 1000;
    }
    if (setsockopt(s->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
        return -errno;
    return 0;
}

/* The socket's descriptor (tests inspect it; nothing else uses it). */
int ctpy_sock_fd(const struct ctpy_sock *s)
{
    return s->fd;
}

void ctpy_close(struct ctpy_sock *s)
{
    if (!s)
        return;
    close(s->fd);
    free(s->buf);
    free(s);
}

static int send_all(struct ctpy_sock *s, const void *buf, size_t len)
{
    struct sockaddr_nl sa;
    ssize_t n;

    memset(&sa, 0, sizeof(sa));
    sa.nl_family = AF_NETLINK;
    do {
        n = sendto(s->fd, buf, len, 0, (struct sockaddr *)&sa, sizeof(sa));
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if ((size_t)n != len)
        return -EMSGSIZE;
    return 0;
}

static ssize_t recv_some(struct ctpy_sock *s)
{
    ssize_t n;

    do {
        n = recv(s->fd, s->buf, CTPY_RECV_BUF, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    s->len = (size_t)n;
    s->off = 0;
    return n;
}

/* After a receive error (ENOBUFS: replies were dropped) the queue still
 * holds stale replies and the socket stays congested: the kernel then drops
 * further replies without reporting it, and the next exchange waits
 * forever.  Empty the queue so the socket is usable again. */
static void drain(struct ctpy_sock *s)
{
    while (recv(s->fd, s->buf, CTPY_RECV_BUF, MSG_DONTWAIT) > 0 || errno == EINTR)
        ;
    s->len = s->off = 0;
}

static struct nlmsghdr *put_header(char *buf, uint8_t msg, uint16_t flags,
                                   uint8_t family, uint8_t version,
                                   uint32_t seq)
{
    struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
    struct nfgenmsg *nfh;

    nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | msg;
    nlh->nlmsg_flags = NLM_F_REQUEST | flags;
    nlh->nlmsg_seq = seq;
    nfh = mnl_nlmsg_put_extra_header(nlh, sizeof(*nfh));
    nfh->nfgen_family = family;
    nfh->version = version;
    nfh->res_id = 0;
    return nlh;
}

/* ---- records <-> libnetfilter_conntrack ------------------------------ */

static const int A_SRC4[3] = {ATTR_ORIG_IPV4_SRC, ATTR_REPL_IPV4_SRC, ATTR_MASTER_IPV4_SRC};
static const int A_DST4[3] = {ATTR_ORIG_IPV4_DST, ATTR_REPL_IPV4_DST, ATTR_MASTER_IPV4_DST};
static const int A_SRC6[3] = {ATTR_ORIG_IPV6_SRC, ATTR_REPL_IPV6_SRC, ATTR_MASTER_IPV6_SRC};
static const int A_DST6[3] = {ATTR_ORIG_IPV6_DST, ATTR_REPL_IPV6_DST, ATTR_MASTER_IPV6_DST};
static const int A_SPORT[3] = {ATTR_ORIG_PORT_SRC, ATTR_REPL_PORT_SRC, ATTR_MASTER_PORT_SRC};
static const int A_DPORT[3] = {ATTR_ORIG_PORT_DST, ATTR_REPL_PORT_DST, ATTR_MASTER_PORT_DST};
static const int A_L3[3] = {ATTR_ORIG_L3PROTO, ATTR_REPL_L3PROTO, ATTR_MASTER_L3PROTO};
static const int A_L4[3] = {ATTR_ORIG_L4PROTO, ATTR_REPL_L4PROTO, ATTR_MASTER_L4PROTO};
static const int A_ZONE[3] = {ATTR_ORIG_ZONE, ATTR_REPL_ZONE, -1};

static int is_icmp(uint8_t proto)
{
    return proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6;
}

static void get_tuple(const struct nf_conntrack *ct, int dir,
                      struct ctpy_tuple *t)
{
    memset(t, 0, sizeof(*t));
    t->family = nfct_get_attr_u8(ct, A_L3[dir]);
    t->proto = nfct_get_attr_u8(ct, A_L4[dir]);
    if (t->family == AF_INET) {
        uint32_t a = nfct_get_attr_u32(ct, A_SRC4[dir]);
        memcpy(t->src, &a, 4);
        a = nfct_get_attr_u32(ct, A_DST4[dir]);
        memcpy(t->dst, &a, 4);
    } else if (t->family == AF_INET6) {
        const void *p = nfct_get_attr(ct, A_SRC6[dir]);
        if (p)
            memcpy(t->src, p, 16);
        p = nfct_get_attr(ct, A_DST6[dir]);
        if (p)
            memcpy(t->dst, p, 16);
    }
    if (is_icmp(t->proto)) {
        /* libnetfilter_conntrack keeps one ICMP type/code/id: the original
         * direction's.  The reply direction's type is derived in Python. */
        t->has_icmp = 1;
        t->icmp_type = nfct_get_attr_u8(ct, ATTR_ICMP_TYPE);
        t->icmp_code = nfct_get_attr_u8(ct, ATTR_ICMP_CODE);
        t->icmp_id = ntohs(nfct_get_attr_u16(ct, ATTR_ICMP_ID));
    } else {
        t->sport = ntohs(nfct_get_attr_u16(ct, A_SPORT[dir]));
        t->dport = ntohs(nfct_get_attr_u16(ct, A_DPORT[dir]));
    }
    if (A_ZONE[dir] >= 0 && nfct_attr_is_set(ct, A_ZONE[dir]) > 0) {
        t->has_zone = 1;
        t->zone = nfct_get_attr_u16(ct, A_ZONE[dir]);
    }
}

static void set_tuple(struct nf_conntrack *ct, int dir,
                      const struct ctpy_tuple *t)
{
    nfct_set_attr_u8(ct, A_L3[dir], t->family);
    nfct_set_attr_u8(ct, A_L4[dir], t->proto);
    if (t->family == AF_INET) {
        uint32_t a;
        memcpy(&a, t->src, 4);
        nfct_set_attr_u32(ct, A_SRC4[dir], a);
        memcpy(&a, t->dst, 4);
        nfct_set_attr_u32(ct, A_DST4[dir], a);
    } else {
        nfct_set_attr(ct, A_SRC6[dir], t->src);
        nfct_set_attr(ct, A_DST6[dir], t->dst);
    }
    if (is_icmp(t->proto)) {
        if (dir == 0) {
            nfct_set_attr_u8(ct, ATTR_ICMP_TYPE, t->icmp_type);
            nfct_set_attr_u8(ct, ATTR_ICMP_CODE, t->icmp_code);
            nfct_set_attr_u16(ct, ATTR_ICMP_ID, htons(t->icmp_id));
        }
    } else {
        nfct_set_attr_u16(ct, A_SPORT[dir], htons(t->sport));
        nfct_set_attr_u16(ct, A_DPORT[dir], htons(t->dport));
    }
    if (t->has_zone && A_ZONE[dir] >= 0)
        nfct_set_attr_u16(ct, A_ZONE[dir], t->zone);
}

static uint32_t pool_put(char *pool, uint32_t *used, const char *str)
{
    size_t n = strlen(str);
    uint32_t off = *used;

    if (n > 0xffff)
        n = 0xffff;
    memcpy(pool + off, str, n);
    *used += (uint32_t)n;
    return off;
}

/* Copy everything a record holds out of a parsed entry.  The caller has
 * checked that the pool has room for the message's strings. */
static void fill_record(const struct nf_conntrack *ct, struct ctpy_record *r,
                        char *pool, uint32_t *pool_used)
{
    uint32_t p = 0;

    memset(r, 0, sizeof(*r));
    if (nfct_attr_is_set(ct, ATTR_ORIG_L3PROTO) > 0) {
        get_tuple(ct, 0, &r->orig);
        p |= CTPY_HAS_ORIG;
    }
    if (nfct_attr_is_set(ct, ATTR_REPL_L3PROTO) > 0) {
        get_tuple(ct, 1, &r->reply);
        p |= CTPY_HAS_REPLY;
    }
    if (r->reply.has_icmp)
        r->reply.icmp_code = r->orig.icmp_code;
    if (nfct_attr_is_set(ct, ATTR_MASTER_L3PROTO) > 0) {
        get_tuple(ct, 2, &r->master);
        p |= CTPY_HAS_MASTER;
    }
#define GET32(attr, field, bit) \
    if (nfct_attr_is_set(ct, attr) > 0) { r->field = nfct_get_attr_u32(ct, attr); p |= bit; }
    GET32(ATTR_STATUS, status, CTPY_HAS_STATUS)
    GET32(ATTR_TIMEOUT, timeout, CTPY_HAS_TIMEOUT)
    GET32(ATTR_MARK, mark, CTPY_HAS_MARK)
    GET32(ATTR_ID, id, CTPY_HAS_ID)
    GET32(ATTR_USE, use, CTPY_HAS_USE)
#undef GET32
    if (nfct_attr_is_set(ct, ATTR_ZONE) > 0) {
        r->zone = nfct_get_attr_u16(ct, ATTR_ZONE);
        p |= CTPY_HAS_ZONE;
    } else if (r->orig.has_zone) {
        r->zone = r->orig.zone;
        p |= CTPY_HAS_ZONE;
    } else if (r->reply.has_zone) {
        r->zone = r->reply.zone;
        p |= CTPY_HAS_ZONE;
    }
    if (nfct_attr_is_set(ct, ATTR_TCP_STATE) > 0) {
        r->state = nfct_get_attr_u8(ct, ATTR_TCP_STATE);
        p |= CTPY_HAS_STATE;
    } else if (nfct_attr_is_set(ct, ATTR_SCTP_STATE) > 0) {
        r->state = nfct_get_attr_u8(ct, ATTR_SCTP_STATE);
        p |= CTPY_HAS_STATE;
    } else if (nfct_attr_is_set(ct, ATTR_DCCP_STATE) > 0) {
        r->state = nfct_get_attr_u8(ct, ATTR_DCCP_STATE);
        p |= CTPY_HAS_STATE;
    }
    if (nfct_attr_is_set(ct, ATTR_ORIG_COUNTER_PACKETS) > 0) {
        r->counters[0] = nfct_get_attr_u64(ct, ATTR_ORIG_COUNTER_PACKETS);
        r->counters[1] = nfct_get_attr_u64(ct, ATTR_ORIG_COUNTER_BYTES);
        r->counters[2] = nfct_get_attr_u64(ct, ATTR_REPL_COUNTER_PACKETS);
        r->counters[3] = nfct_get_attr_u64(ct, ATTR_REPL_COUNTER_BYTES);
        p |= CTPY_HAS_COUNTERS;
    }
    if (nfct_attr_is_set(ct, ATTR_TIMESTAMP_START) > 0) {
        r->ts_start = nfct_get_attr_u64(ct, ATTR_TIMESTAMP_START);
        p |= CTPY_HAS_TS_START;
    }
    if (nfct_attr_is_set(ct, ATTR_TIMESTAMP_STOP) > 0) {
        r->ts_stop = nfct_get_attr_u64(ct, ATTR_TIMESTAMP_STOP);
        p |= CTPY_HAS_TS_STOP;
    }
    if (nfct_attr_is_set(ct, ATTR_CONNLABELS) > 0) {
        const struct nfct_bitmask *b = nfct_get_attr(ct, ATTR_CONNLABELS);
        int i, max = b ? (int)nfct_bitmask_maxbit(b) : -1;
        for (i = 0; i <= max && i < 128; i++)
            if (nfct_bitmask_test_bit(b, i))
                r->labels[i / 8] |= (uint8_t)(1u << (i % 8));
        p |= CTPY_HAS_LABELS;
    }
    if (nfct_attr_is_set(ct, ATTR_HELPER_NAME) > 0) {
        const char *h = nfct_get_attr(ct, ATTR_HELPER_NAME);
        if (h) {
            r->helper_off = pool_put(pool, pool_used, h);
            r->helper_len = (uint16_t)(*pool_used - r->helper_off);
            p |= CTPY_HAS_HELPER;
        }
    }
    if (nfct_attr_is_set(ct, ATTR_SECCTX) > 0) {
        const char *c = nfct_get_attr(ct, ATTR_SECCTX);
        if (c) {
            r->secctx_off = pool_put(pool, pool_used, c);
            r->secctx_len = (uint16_t)(*pool_used - r->secctx_off);
            p |= CTPY_HAS_SECCTX;
        }
    }
    r->present = p;
}

/* ---- the fast parser ---------------------------------------------------
 *
 * The dump path reads ctnetlink attributes straight into a record: one pass,
 * no allocation, no call per attribute.  libnetfilter_conntrack's generic
 * parser (nfct_nlmsg_parse, used by fill_record above) spends about as long
 * in userspace as the kernel spends producing the dump; this one a fraction
 * of that.  ctpy_dump_crosscheck() compares the two on every entry of a live
 * table, ctpy_parse_message() on one message, and the tests run both.
 *
 * It is also the fence around a kernel ABI.  It reads nothing outside
 * [nlh, nlh + nlmsg_len) and refuses the message (-1) when an attribute it
 * reads has another size than the ABI's, a string is not NUL-terminated, or
 * a nest it walks is not filled by whole attributes (a length that overruns
 * its parent, a truncated tail).  A known attribute sent twice counts once,
 * the last (netlink's rule, and nfct_nlmsg_parse's); unknown attributes are
 * skipped.
 */

#define A_OK(a, rem) ((rem) >= (int)sizeof(struct nlattr) && \
                      (a)->nla_len >= sizeof(struct nlattr) && (int)(a)->nla_len <= (rem))
#define A_NEXT(a, rem) ((rem) -= NLA_ALIGN((a)->nla_len), \
                        (const struct nlattr *)((const char *)(a) + NLA_ALIGN((a)->nla_len)))
#define A_TYPE(a) ((a)->nla_type & NLA_TYPE_MASK)
#define A_DATA(a) ((const void *)((const char *)(a) + NLA_HDRLEN))
#define A_LEN(a) ((int)(a)->nla_len - NLA_HDRLEN)
#define A_FOR(a, parent, rem) \
    for (rem = A_LEN(parent), a = (const struct nlattr *)A_DATA(parent); A_OK(a, rem); a = A_NEXT(a, rem))
/* After an A_FOR loop: bytes left that are no whole attribute (the padding
 * of an unaligned last attribute leaves rem at -3..0). */
#define A_LEFTOVER(rem) ((rem) > 0)

static uint8_t a_u8(const struct nlattr *a, int *bad)
{
    if (A_LEN(a) != 1) {
        *bad = 1;
        return 0;
    }
    return *(const uint8_t *)A_DATA(a);
}

static uint16_t a_be16(const struct nlattr *a, int *bad)
{
    uint16_t v = 0;
    if (A_LEN(a) != 2)
        *bad = 1;
    else
        memcpy(&v, A_DATA(a), 2);
    return ntohs(v);
}

static uint32_t a_be32(const struct nlattr *a, int *bad)
{
    uint32_t v = 0;
    if (A_LEN(a) != 4)
        *bad = 1;
    else
        memcpy(&v, A_DATA(a), 4);
    return ntohl(v);
}

static uint64_t a_be64(const struct nlattr *a, int *bad)
{
    uint64_t v = 0;
    if (A_LEN(a) != 8)
        *bad = 1;
    else
        memcpy(&v, A_DATA(a), 8);
    return be64toh(v);
}

static void a_addr(const struct nlattr *a, uint8_t *dst, int size, int *bad)
{
    if (A_LEN(a) != size)
        *bad = 1;
    else
        memcpy(dst, A_DATA(a), (size_t)size);
}

/* t is zeroed (a tuple seen again is cleared by the caller: the last counts). */
static void fast_tuple(const struct nlattr *nest, uint8_t family,
                       struct ctpy_tuple *t, int *bad)
{
    const struct nlattr *a, *b;
    int rem, rem2, seen_ip = 0, seen_proto = 0;

    t->family = family;
    A_FOR(a, nest, rem) {
        switch (A_TYPE(a)) {
        case CTA_TUPLE_IP:
            if (seen_ip++) {
                memset(t->src, 0, sizeof(t->src));
                memset(t->dst, 0, sizeof(t->dst));
            }
            A_FOR(b, a, rem2) {
                switch (A_TYPE(b)) {
                case CTA_IP_V4_SRC: a_addr(b, t->src, 4, bad); break;
                case CTA_IP_V4_DST: a_addr(b, t->dst, 4, bad); break;
                case CTA_IP_V6_SRC: a_addr(b, t->src, 16, bad); break;
                case CTA_IP_V6_DST: a_addr(b, t->dst, 16, bad); break;
                }
            }
            if (A_LEFTOVER(rem2))
                *bad = 1;
            break;
        case CTA_TUPLE_PROTO:
            if (seen_proto++) {
                t->proto = 0;
                t->sport = t->dport = t->icmp_id = 0;
                t->icmp_type = t->icmp_code = t->has_icmp = 0;
            }
            A_FOR(b, a, rem2) {
                switch (A_TYPE(b)) {
                case CTA_PROTO_NUM: t->proto = a_u8(b, bad); break;
                case CTA_PROTO_SRC_PORT: t->sport = a_be16(b, bad); break;
                case CTA_PROTO_DST_PORT: t->dport = a_be16(b, bad); break;
                case CTA_PROTO_ICMP_ID:
                case CTA_PROTO_ICMPV6_ID: t->icmp_id = a_be16(b, bad); t->has_icmp = 1; break;
                case CTA_PROTO_ICMP_TYPE:
                case CTA_PROTO_ICMPV6_TYPE: t->icmp_type = a_u8(b, bad); t->has_icmp = 1; break;
                case CTA_PROTO_ICMP_CODE:
                case CTA_PROTO_ICMPV6_CODE: t->icmp_code = a_u8(b, bad); t->has_icmp = 1; break;
                }
            }
            if (A_LEFTOVER(rem2))
                *bad = 1;
            break;
        case CTA_TUPLE_ZONE:
            t->zone = a_be16(a, bad);
            t->has_zone = 1;
            break;
        }
    }
    if (A_LEFTOVER(rem))
        *bad = 1;
}

/* A tuple attribute into its record slot: a duplicate replaces the earlier one (the last counts). */
static inline void take_tuple(const struct nlattr *a, uint8_t family, struct ctpy_tuple *t,
                              uint32_t flag, uint32_t *present, int *bad)
{
    if (*present & flag)
        memset(t, 0, sizeof(*t));
    fast_tuple(a, family, t, bad);
    *present |= flag;
}

/* One direction's counters; returns whether the packet count was there. */
static int fast_counters(const struct nlattr *nest, uint64_t *c, int *bad)
{
    const struct nlattr *a;
    int rem, packets = 0;

    c[0] = c[1] = 0;
    A_FOR(a, nest, rem) {
        switch (A_TYPE(a)) {
        case CTA_COUNTERS_PACKETS: c[0] = a_be64(a, bad); packets = 1; break;
        case CTA_COUNTERS32_PACKETS: c[0] = a_be32(a, bad); packets = 1; break;
        case CTA_COUNTERS_BYTES: c[1] = a_be64(a, bad); break;
        case CTA_COUNTERS32_BYTES: c[1] = a_be32(a, bad); break;
        }
    }
    if (A_LEFTOVER(rem))
        *bad = 1;
    return packets;
}

/* The last string attribute of type `type` inside nest, into the pool.  The
 * kernel sends them NUL-terminated (nla_put_string). */
static int fast_string(const struct nlattr *nest, int type, char *pool,
                       uint32_t *used, uint32_t *off, uint16_t *len, int *bad)
{
    const struct nlattr *a, *s = NULL;
    int rem;
    size_t n;

    A_FOR(a, nest, rem) {
        if (A_TYPE(a) == type)
            s = a;
    }
    if (A_LEFTOVER(rem)) {
        *bad = 1;
        return 0;
    }
    if (!s)
        return 0;
    if (A_LEN(s) < 1 || ((const char *)A_DATA(s))[A_LEN(s) - 1] != 0) {
        *bad = 1;
        return 0;
    }
    n = strlen(A_DATA(s));
    if (n > 0xffff)
        n = 0xffff;
    *off = *used;
    memcpy(pool + *used, A_DATA(s), n);
    *used += (uint32_t)n;
    *len = (uint16_t)n;
    return 1;
}

/* The state in a CTA_PROTOINFO nest; returns whether there was one. */
static int fast_protoinfo(const struct nlattr *nest, uint8_t *state, int *bad)
{
    const struct nlattr *a, *b;
    int rem, rem2, want, has = 0;

    *state = 0;
    A_FOR(a, nest, rem) {
        switch (A_TYPE(a)) {
        case CTA_PROTOINFO_TCP: want = CTA_PROTOINFO_TCP_STATE; break;
        case CTA_PROTOINFO_SCTP: want = CTA_PROTOINFO_SCTP_STATE; break;
        case CTA_PROTOINFO_DCCP: want = CTA_PROTOINFO_DCCP_STATE; break;
        default: continue;
        }
        has = 0;
        *state = 0;
        A_FOR(b, a, rem2) {
            if (A_TYPE(b) == want) {
                *state = a_u8(b, bad);
                has = 1;
            }
        }
        if (A_LEFTOVER(rem2))
            *bad = 1;
    }
    if (A_LEFTOVER(rem))
        *bad = 1;
    return has;
}

/* A CTA_TIMESTAMP nest; returns the CTPY_HAS_TS_* bits it set. */
static uint32_t fast_timestamp(const struct nlattr *nest, struct ctpy_record *r, int *bad)
{
    const struct nlattr *a;
    int rem;
    uint32_t p = 0;

    r->ts_start = r->ts_stop = 0;
    A_FOR(a, nest, rem) {
        if (A_TYPE(a) == CTA_TIMESTAMP_START) {
            r->ts_start = a_be64(a, bad);
            p |= CTPY_HAS_TS_START;
        } else if (A_TYPE(a) == CTA_TIMESTAMP_STOP) {
            r->ts_stop = a_be64(a, bad);
            p |= CTPY_HAS_TS_STOP;
        }
    }
    if (A_LEFTOVER(rem))
        *bad = 1;
    return p;
}

/* CTA_LABELS is the kernel's array of native-endian unsigned long words
 * (nf_conn_labels.bits); the record keeps bit n at labels[n / 8] bit n % 8
 * whatever the host's byte order.  An empty attribute means no labels.
 * Returns whether there are labels. */
static int fast_labels(const struct nlattr *a, uint8_t *labels, int *bad)
{
    const unsigned char *d = A_DATA(a);
    size_t w, k, n = (size_t)A_LEN(a);

    memset(labels, 0, 16);
    if (n == 0)
        return 0;
    if (n % sizeof(unsigned long)) {
        *bad = 1;
        return 0;
    }
    for (w = 0; w < n / sizeof(unsigned long) && (w + 1) * sizeof(unsigned long) <= 16; w++) {
        unsigned long v;
        memcpy(&v, d + w * sizeof(v), sizeof(v));
        for (k = 0; k < sizeof(v); k++)
            labels[w * sizeof(v) + k] = (uint8_t)(v >> (8 * k));
    }
    return 1;
}

/* Parse one IPCTNL_MSG_CT_NEW/DELETE message into r: 0, or -1 when the
 * message is malformed or has no original tuple.  The caller has checked
 * that nlmsg_len bytes are readable; strings go to pool, which must have
 * nlmsg_len bytes free. */
static int parse_fast(const struct nlmsghdr *nlh, struct ctpy_record *r,
                      char *pool, uint32_t *used)
{
    const struct nfgenmsg *nfh;
    const struct nlattr *a, *help = NULL, *secctx = NULL;
    uint32_t p = 0;
    int rem, bad = 0, orig_counters = 0;
    uint8_t family;

    if (nlh->nlmsg_len < NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(*nfh)))
        return -1;
    nfh = (const struct nfgenmsg *)NLMSG_DATA(nlh);
    family = nfh->nfgen_family;
    if (family != AF_INET && family != AF_INET6)
        return -1;  /* conntrack entries are IPv4 or IPv6 */
    memset(r, 0, sizeof(*r));
    rem = (int)nlh->nlmsg_len - NLMSG_HDRLEN - NLMSG_ALIGN(sizeof(*nfh));
    for (a = (const struct nlattr *)((const char *)nfh + NLMSG_ALIGN(sizeof(*nfh)));
         A_OK(a, rem); a = A_NEXT(a, rem)) {
        switch (A_TYPE(a)) {
        case CTA_TUPLE_ORIG:
            take_tuple(a, family, &r->orig, CTPY_HAS_ORIG, &p, &bad);
            break;
        case CTA_TUPLE_REPLY:
            take_tuple(a, family, &r->reply, CTPY_HAS_REPLY, &p, &bad);
            break;
        case CTA_TUPLE_MASTER:
            take_tuple(a, family, &r->master, CTPY_HAS_MASTER, &p, &bad);
            break;
        case CTA_STATUS: r->status = a_be32(a, &bad); p |= CTPY_HAS_STATUS; break;
        case CTA_TIMEOUT: r->timeout = a_be32(a, &bad); p |= CTPY_HAS_TIMEOUT; break;
        case CTA_MARK: r->mark = a_be32(a, &bad); p |= CTPY_HAS_MARK; break;
        case CTA_ID: r->id = a_be32(a, &bad); p |= CTPY_HAS_ID; break;
        case CTA_USE: r->use = a_be32(a, &bad); p |= CTPY_HAS_USE; break;
        case CTA_ZONE: r->zone = a_be16(a, &bad); p |= CTPY_HAS_ZONE; break;
        case CTA_PROTOINFO:
            p &= ~(uint32_t)CTPY_HAS_STATE;
            if (fast_protoinfo(a, &r->state, &bad))
                p |= CTPY_HAS_STATE;
            break;
        case CTA_COUNTERS_ORIG: orig_counters = fast_counters(a, &r->counters[0], &bad); break;
        case CTA_COUNTERS_REPLY: fast_counters(a, &r->counters[2], &bad); break;
        case CTA_TIMESTAMP:
            p &= ~(uint32_t)(CTPY_HAS_TS_START | CTPY_HAS_TS_STOP);
            p |= fast_timestamp(a, r, &bad);
            break;
        case CTA_LABELS:
            p &= ~(uint32_t)CTPY_HAS_LABELS;
            if (fast_labels(a, r->labels, &bad))
                p |= CTPY_HAS_LABELS;
            break;
        case CTA_HELP: help = a; break;
        case CTA_SECCTX: secctx = a; break;
        }
    }
    if (A_LEFTOVER(rem) || bad)
        return -1;
    if (orig_counters)
        p |= CTPY_HAS_COUNTERS;
    else  /* a record has counters when the original direction's are there */
        memset(r->counters, 0, sizeof(r->counters));
    if (help && fast_string(help, CTA_HELP_NAME, pool, used, &r->helper_off,
                            &r->helper_len, &bad))
        p |= CTPY_HAS_HELPER;
    if (secctx && fast_string(secctx, CTA_SECCTX_NAME, pool, used, &r->secctx_off,
                              &r->secctx_len, &bad))
        p |= CTPY_HAS_SECCTX;
    if (bad)
        return -1;
    if (!(p & CTPY_HAS_ZONE)) {
        if (r->orig.has_zone) {
            r->zone = r->orig.zone;
            p |= CTPY_HAS_ZONE;
        } else if (r->reply.has_zone) {
            r->zone = r->reply.zone;
            p |= CTPY_HAS_ZONE;
        }
    }
    r->present = p;
    return (p & CTPY_HAS_ORIG) ? 0 : -1;
}

static int has_ports(uint8_t proto);

/* A create whose reply tuple is not the inverse of the original one asks
 * for NAT, as conntrack -I --src-nat/--dst-nat does: send the inverse as
 * the reply tuple plus CTA_NAT_DST (where the reply comes from) and
 * CTA_NAT_SRC (where it goes to); the kernel's NAT core then sets the
 * reply tuple and the SRC_NAT/DST_NAT status bits itself.  (A NAT'd reply
 * tuple sent as is would be kept without any NAT status.) */
static void set_reply_or_nat(struct nf_conntrack *ct, const struct ctpy_record *r)
{
    const struct ctpy_tuple *o = &r->orig, *y = &r->reply;
    struct ctpy_tuple inv = *y;
    int n = o->family == AF_INET ? 4 : 16;
    int ports = has_ports(o->proto);
    int dnat = memcmp(y->src, o->dst, n) || (ports && y->sport != o->dport);
    int snat = memcmp(y->dst, o->src, n) || (ports && y->dport != o->sport);
    uint32_t a;

    if (!dnat && !snat) {
        set_tuple(ct, 1, y);
        return;
    }
    memcpy(inv.src, o->dst, n);
    memcpy(inv.dst, o->src, n);
    if (ports) {
        inv.sport = o->dport;
        inv.dport = o->sport;
    }
    set_tuple(ct, 1, &inv);
    if (dnat) {
        if (n == 4) {
            memcpy(&a, y->src, 4);
            nfct_set_attr_u32(ct, ATTR_DNAT_IPV4, a);
        } else {
            nfct_set_attr(ct, ATTR_DNAT_IPV6, y->src);
        }
        if (ports)
            nfct_set_attr_u16(ct, ATTR_DNAT_PORT, htons(y->sport));
    }
    if (snat) {
        if (n == 4) {
            memcpy(&a, y->dst, 4);
            nfct_set_attr_u32(ct, ATTR_SNAT_IPV4, a);
        } else {
            nfct_set_attr(ct, ATTR_SNAT_IPV6, y->dst);
        }
        if (ports)
            nfct_set_attr_u16(ct, ATTR_SNAT_PORT, htons(y->dport));
    }
}

/* Set on ct what the record says is present (for create/update/get/delete). */
static int record_to_ct(const struct ctpy_record *r, const char *pool,
                        struct nf_conntrack *ct, int lookup_only, int create)
{
    uint32_t p = r->present;

    set_tuple(ct, 0, &r->orig);
    /* A zone travels either as CTA_ZONE or inside a tuple, never both
     * (the kernel rejects that). */
    if ((p & CTPY_HAS_ZONE) && !r->orig.has_zone && !r->reply.has_zone)
        nfct_set_attr_u16(ct, ATTR_ZONE, r->zone);
    if (lookup_only)
        return 0; /* get and delete: the tuple and the zone name the entry */
    if ((p & CTPY_HAS_REPLY) && create)
        set_reply_or_nat(ct, r);
    else if (p & CTPY_HAS_REPLY)
        set_tuple(ct, 1, &r->reply);
    /* A create sends only the bits a user may set; the kernel sets
     * CONFIRMED and the NAT bits itself (Python checked the rest). */
    if (p & CTPY_HAS_STATUS)
        nfct_set_attr_u32(ct, ATTR_STATUS,
                          create ? r->status & ~(uint32_t)IPS_UNCHANGEABLE_MASK : r->status);
    if (p & CTPY_HAS_TIMEOUT)
        nfct_set_attr_u32(ct, ATTR_TIMEOUT, r->timeout);
    if (p & CTPY_HAS_MARK)
        nfct_set_attr_u32(ct, ATTR_MARK, r->mark);
    if (p & CTPY_HAS_STATE) {
        if (r->orig.proto == IPPROTO_TCP)
            nfct_set_attr_u8(ct, ATTR_TCP_STATE, r->state);
        else if (r->orig.proto == IPPROTO_SCTP) {
            /* the kernel takes an SCTP state only with both vtags */
            nfct_set_attr_u8(ct, ATTR_SCTP_STATE, r->state);
            nfct_set_attr_u32(ct, ATTR_SCTP_VTAG_ORIG, 0);
            nfct_set_attr_u32(ct, ATTR_SCTP_VTAG_REPL, 0);
        }
        else if (r->orig.proto == IPPROTO_DCCP)
            nfct_set_attr_u8(ct, ATTR_DCCP_STATE, r->state);
    }
    if (p & CTPY_HAS_LABELS) {
        struct nfct_bitmask *b = nfct_bitmask_new(127);
        int i;
        if (!b)
            return -ENOMEM;
        for (i = 0; i < 128; i++)
            if (r->labels[i / 8] & (1u << (i % 8)))
                nfct_bitmask_set_bit(b, i);
        nfct_set_attr(ct, ATTR_CONNLABELS, b); /* ct owns it now */
    }
    if ((p & CTPY_HAS_HELPER) && pool) {
        char name[32];
        size_t n = r->helper_len;
        if (n > sizeof(name) - 1)
            n = sizeof(name) - 1;
        memcpy(name, pool + r->helper_off, n);
        name[n] = 0;
        nfct_set_attr(ct, ATTR_HELPER_NAME, name);
    }
    return 0;
}

/* Build one complete ctnetlink request for record r into buf. */
static int build_request(char *buf, uint8_t msg, uint16_t flags,
                         const struct ctpy_record *r, const char *pool,
                         int pin_id, uint32_t seq)
{
    struct nf_conntrack *ct = nfct_new();
    struct nlmsghdr *nlh;
    int err;

    if (!ct)
        return -ENOMEM;
    nlh = put_header(buf, msg, flags, r->orig.family, 0, seq);
    err = record_to_ct(r, pool, ct, msg != IPCTNL_MSG_CT_NEW,
                       msg == IPCTNL_MSG_CT_NEW && (flags & NLM_F_CREATE));
    if (err == 0 && nfct_nlmsg_build(nlh, ct) < 0)
        err = -EINVAL;
    nfct_destroy(ct);
    if (err)
        return err;
    /* nfct_nlmsg_build never emits CTA_ID; the kernel checks it on delete,
     * so a delete can never hit a newer entry with the same tuple. */
    if (pin_id && (r->present & CTPY_HAS_ID))
        mnl_attr_put_u32(nlh, CTA_ID, htonl(r->id));
    return (int)nlh->nlmsg_len;
}

/* ---- the userspace filter --------------------------------------------- */

static int cidr_match(const struct ctpy_cidr *c, const struct ctpy_tuple *t,
                      const uint8_t *addr)
{
    int i, n;

    if (c->family != t->family)
        return 0;
    n = t->family == AF_INET ? 4 : 16;
    for (i = 0; i < n; i++)
        if ((addr[i] & c->mask[i]) != c->addr[i])
            return 0;
    return 1;
}

static int has_ports(uint8_t proto)
{
    return proto == IPPROTO_TCP || proto == IPPROTO_UDP ||
           proto == IPPROTO_UDPLITE || proto == IPPROTO_SCTP ||
           proto == IPPROTO_DCCP;
}

/* conntrack(8)'s --src-nat/--dst-nat test: the NAT_DONE bit is set and the
 * reply tuple's address (and, for port protocols, port) differs from the
 * original's; with an address or port given, the translated one equals it. */
static int nat_match(const struct ctpy_nat *m, const struct ctpy_record *r, int src)
{
    const struct ctpy_tuple *o = &r->orig, *y = &r->reply;
    int n = o->family == AF_INET ? 4 : 16;
    const uint8_t *now = src ? y->dst : y->src;
    const uint8_t *was = src ? o->src : o->dst;
    uint16_t pnow = src ? y->dport : y->sport;
    uint16_t pwas = src ? o->sport : o->dport;
    int addr_nat, port_nat;

    if (!(r->status & (src ? IPS_SRC_NAT_DONE : IPS_DST_NAT_DONE)))
        return 0;
    addr_nat = memcmp(now, was, n) != 0;
    port_nat = has_ports(o->proto) && pnow != pwas;
    if (m->has_addr && (m->family != o->family || !addr_nat || memcmp(now, m->addr, n)))
        return 0;
    if (m->has_port && (!port_nat || pnow != m->port))
        return 0;
    if (!m->has_addr && !m->has_port)
        return addr_nat || port_nat;
    return 1;
}

int ctpy_match(const struct ctpy_filter *f, const struct ctpy_record *r)
{
    uint32_t w = f->fields;
    const struct ctpy_tuple *o = &r->orig;

    if (!w)
        return 1;
    if ((w & CTPY_F_FAMILY) && o->family != f->family)
        return 0;
    if ((w & CTPY_F_PROTO) && o->proto != f->proto)
        return 0;
    if ((w & CTPY_F_MARK) && (r->mark & f->mark_mask) != f->mark_val)
        return 0;
    if ((w & CTPY_F_STATUS) && (r->status & f->status_mask) != f->status_val)
        return 0;
    if ((w & CTPY_F_ZONE) && r->zone != f->zone)
        return 0;
    if ((w & CTPY_F_STATE) &&
        (!(r->present & CTPY_HAS_STATE) || r->state >= 32 ||
         !(f->states & (1u << r->state))))
        return 0;
    if ((w & (CTPY_F_SPORT | CTPY_F_DPORT)) && !has_ports(o->proto))
        return 0;
    if ((w & CTPY_F_SPORT) && (o->sport < f->sport_lo || o->sport > f->sport_hi))
        return 0;
    if ((w & CTPY_F_DPORT) && (o->dport < f->dport_lo || o->dport > f->dport_hi))
        return 0;
    if ((w & CTPY_F_ORIG_SRC) && !cidr_match(&f->orig_src, o, o->src))
        return 0;
    if ((w & CTPY_F_ORIG_DST) && !cidr_match(&f->orig_dst, o, o->dst))
        return 0;
    if ((w & CTPY_F_REPLY_SRC) && !cidr_match(&f->reply_src, &r->reply, r->reply.src))
        return 0;
    if ((w & CTPY_F_REPLY_DST) && !cidr_match(&f->reply_dst, &r->reply, r->reply.dst))
        return 0;
    if ((w & CTPY_F_ORIG_ZONE) && (!o->has_zone || o->zone != f->orig_zone))
        return 0;
    if ((w & CTPY_F_REPLY_ZONE) && (!r->reply.has_zone || r->reply.zone != f->reply_zone))
        return 0;
    if ((w & CTPY_F_SRC_NAT) && !nat_match(&f->src_nat, r, 1))
        return 0;
    if ((w & CTPY_F_DST_NAT) && !nat_match(&f->dst_nat, r, 0))
        return 0;
    if ((w & CTPY_F_ANY_NAT) && !nat_match(&f->any_nat, r, 1) && !nat_match(&f->any_nat, r, 0))
        return 0;
    if (w & CTPY_F_LABELS) {
        int i;
        for (i = 0; i < 16; i++)
            if ((r->labels[i] & f->labels_mask[i]) != f->labels_val[i])
                return 0;
    }
    return 1;
}

/* ---- kernel-side filter attributes ------------------------------------- */

static void put_filter_tuple(struct nlmsghdr *nlh, int type,
                             const struct ctpy_tuple *t, uint32_t flags)
{
    struct nlattr *nt = mnl_attr_nest_start(nlh, type);
    struct nlattr *n;

    if (flags & (CTPY_CTA_IP_SRC | CTPY_CTA_IP_DST)) {
        n = mnl_attr_nest_start(nlh, CTA_TUPLE_IP);
        if (t->family == AF_INET) {
            if (flags & CTPY_CTA_IP_SRC)
                mnl_attr_put(nlh, CTA_IP_V4_SRC, 4, t->src);
            if (flags & CTPY_CTA_IP_DST)
                mnl_attr_put(nlh, CTA_IP_V4_DST, 4, t->dst);
        } else {
            if (flags & CTPY_CTA_IP_SRC)
                mnl_attr_put(nlh, CTA_IP_V6_SRC, 16, t->src);
            if (flags & CTPY_CTA_IP_DST)
                mnl_attr_put(nlh, CTA_IP_V6_DST, 16, t->dst);
        }
        mnl_attr_nest_end(nlh, n);
    }
    if (flags & CTPY_CTA_PROTO_NUM) {
        n = mnl_attr_nest_start(nlh, CTA_TUPLE_PROTO);
        mnl_attr_put_u8(nlh, CTA_PROTO_NUM, t->proto);
        if (flags & CTPY_CTA_SRC_PORT)
            mnl_attr_put_u16(nlh, CTA_PROTO_SRC_PORT, htons(t->sport));
        if (flags & CTPY_CTA_DST_PORT)
            mnl_attr_put_u16(nlh, CTA_PROTO_DST_PORT, htons(t->dport));
        mnl_attr_nest_end(nlh, n);
    }
    mnl_attr_nest_end(nlh, nt);
}

static void put_kfilter(struct nlmsghdr *nlh, const struct ctpy_kfilter *kf)
{
    if (!kf)
        return;
    if (kf->fields & CTPY_K_MARK) {
        mnl_attr_put_u32(nlh, CTA_MARK, htonl(kf->mark_val));
        mnl_attr_put_u32(nlh, CTA_MARK_MASK, htonl(kf->mark_mask));
    }
    if (kf->fields & CTPY_K_STATUS) {
        mnl_attr_put_u32(nlh, CTA_STATUS, htonl(kf->status_val));
        mnl_attr_put_u32(nlh, CTA_STATUS_MASK, htonl(kf->status_mask));
    }
    if (kf->fields & CTPY_K_ZONE)
        mnl_attr_put_u16(nlh, CTA_ZONE, htons(kf->zone));
    if ((kf->fields & CTPY_K_TUPLE) && (kf->orig_flags || kf->reply_flags)) {
        struct nlattr *n;
        if (kf->orig_flags)
            put_filter_tuple(nlh, CTA_TUPLE_ORIG, &kf->orig, kf->orig_flags);
        if (kf->reply_flags)
            put_filter_tuple(nlh, CTA_TUPLE_REPLY, &kf->reply, kf->reply_flags);
        n = mnl_attr_nest_start(nlh, CTA_FILTER);
        mnl_attr_put_u32(nlh, CTA_FILTER_ORIG_FLAGS, kf->orig_flags);
        mnl_attr_put_u32(nlh, CTA_FILTER_REPLY_FLAGS, kf->reply_flags);
        mnl_attr_nest_end(nlh, n);
    }
}

/* ---- dumps ------------------------------------------------------------- */

int ctpy_dump_start(struct ctpy_sock *s, uint8_t family,
                    const struct ctpy_kfilter *kf)
{
    char buf[CTPY_MSG_BUF];
    struct nlmsghdr *nlh;
    int err;

    if (s->dumping)
        return -EBUSY;
    s->dump_seq = ++s->seq;
    nlh = put_header(buf, IPCTNL_MSG_CT_GET, NLM_F_DUMP, family, 0, s->dump_seq);
    put_kfilter(nlh, kf);
    err = send_all(s, buf, nlh->nlmsg_len);
    if (err)
        return err;
    s->dumping = 1;
    s->done = 0;
    s->dump_intr = 0;
    s->len = s->off = 0;
    return 0;
}

int ctpy_dump_done(const struct ctpy_sock *s)
{
    return s->done;
}

/* Non-zero when the kernel flagged a message of the current (or last) dump
 * with NLM_F_DUMP_INTR: the table changed under the dump, so it may have
 * missed or repeated entries. */
int ctpy_dump_interrupted(const struct ctpy_sock *s)
{
    return s->dump_intr;
}

/* Walk the dump.  Each matching entry goes to out[] (and its strings to
 * pool) when out is given, else it is only counted.  Returns the number of
 * matches, or -errno. */
static int dump_walk(struct ctpy_sock *s, const struct ctpy_filter *uf,
                     struct ctpy_record *out, int max, char *pool,
                     uint32_t pool_size, uint64_t *count)
{
    struct ctpy_record scratch;
    uint32_t used = 0;
    int n = 0;

    if (!s->dumping)
        return 0;
    while (!out || n < max) {
        struct nlmsghdr *nlh;
        struct ctpy_record *r;
        uint32_t before;

        if (s->off >= s->len) {
            ssize_t got = recv_some(s);
            if (got < 0) {
                s->dumping = 0;
                s->done = 1;
                return (int)got;
            }
            if (got == 0) {
                s->dumping = 0;
                s->done = 1;
                return -EPIPE;
            }
        }
        nlh = (struct nlmsghdr *)(s->buf + s->off);
        if (!mnl_nlmsg_ok(nlh, (int)(s->len - s->off))) {
            s->dumping = 0;
            s->done = 1;
            return -EBADMSG;
        }
        if (nlh->nlmsg_seq != s->dump_seq) {
            s->off += NLMSG_ALIGN(nlh->nlmsg_len); /* stale reply */
            continue;
        }
        if (nlh->nlmsg_flags & NLM_F_DUMP_INTR)
            s->dump_intr = 1;
        if (nlh->nlmsg_type == NLMSG_DONE) {
            s->off += NLMSG_ALIGN(nlh->nlmsg_len);
            s->dumping = 0;
            s->done = 1;
            break;
        }
        if (nlh->nlmsg_type == NLMSG_ERROR) {
            const struct nlmsgerr *e = mnl_nlmsg_get_payload(nlh);
            s->off += NLMSG_ALIGN(nlh->nlmsg_len);
            s->dumping = 0;
            s->done = 1;
            if (e->error)
                return e->error;
            break;
        }
        if (out && pool_size - used < nlh->nlmsg_len) {
            if (n == 0) {
                s->dumping = 0; /* cannot happen with a sane pool size */
                s->done = 1;
                return -ENOBUFS;
            }
            break;
        }
        r = out ? &out[n] : &scratch;
        before = used;
        if (parse_fast(nlh, r, pool, &used) < 0) {
            /* The kernel broke the ABI: say so rather than skip an entry. */
            s->dumping = 0;
            s->done = 1;
            return -EBADMSG;
        }
        if (ctpy_match(uf, r)) {
            n++;
            if (count)
                (*count)++;
        } else {
            used = before;
        }
        s->off += NLMSG_ALIGN(nlh->nlmsg_len);
    }
    return n;
}

int ctpy_dump_next(struct ctpy_sock *s, const struct ctpy_filter *uf,
                   struct ctpy_record *out, int max, char *pool,
                   uint32_t pool_size)
{
    return dump_walk(s, uf, out, max, pool, pool_size, NULL);
}

int ctpy_dump_count(struct ctpy_sock *s, const struct ctpy_filter *uf,
                    uint64_t *count)
{
    /* Count-only walks still need somewhere for strings: a small pool that
     * is reset for every entry is enough. */
    char pool[8192];
    int n;

    *count = 0;
    while (s->dumping) {
        struct ctpy_record r;
        n = dump_walk(s, uf, &r, 1, pool, sizeof(pool), count);
        if (n < 0)
            return n;
    }
    return 0;
}

/* The same record from libnetfilter_conntrack's parser, normalised where it
 * cannot know more: it keeps one ICMP type, code and id (the original's). */
static int records_differ(const struct ctpy_record *fast, const char *fpool,
                          struct ctpy_record *ref, const char *rpool)
{
    if (ref->reply.has_icmp) {
        ref->reply.icmp_type = fast->reply.icmp_type;
        ref->reply.icmp_code = fast->reply.icmp_code;
        ref->reply.icmp_id = fast->reply.icmp_id;
    }
    if (fast->helper_len != ref->helper_len || fast->secctx_len != ref->secctx_len ||
        memcmp(fpool + fast->helper_off, rpool + ref->helper_off, fast->helper_len) ||
        memcmp(fpool + fast->secctx_off, rpool + ref->secctx_off, fast->secctx_len))
        return 1;
    ref->helper_off = fast->helper_off;
    ref->secctx_off = fast->secctx_off;
    return memcmp(fast, ref, sizeof(*fast)) != 0;
}

static int crosscheck_end(struct ctpy_sock *s, int err)
{
    s->dumping = 0;
    s->done = 1;
    return err;
}

int ctpy_dump_crosscheck(struct ctpy_sock *s, uint64_t *checked,
                         uint64_t *mismatched, struct ctpy_record *first_fast,
                         struct ctpy_record *first_ref)
{
    char fpool[8192], rpool[8192]; /* per call: callers may run in parallel */

    *checked = *mismatched = 0;
    while (s->dumping) {
        struct nlmsghdr *nlh;
        struct ctpy_record fast, ref;
        struct nf_conntrack *ct;
        uint32_t fused = 0, rused = 0;

        if (s->off >= s->len) {
            ssize_t got = recv_some(s);
            if (got <= 0)
                return crosscheck_end(s, got < 0 ? (int)got : -EPIPE);
        }
        nlh = (struct nlmsghdr *)(s->buf + s->off);
        if (!mnl_nlmsg_ok(nlh, (int)(s->len - s->off)))
            return crosscheck_end(s, -EBADMSG);
        s->off += NLMSG_ALIGN(nlh->nlmsg_len);
        if (nlh->nlmsg_seq != s->dump_seq)
            continue;
        if (nlh->nlmsg_type == NLMSG_DONE)
            return crosscheck_end(s, 0);
        if (nlh->nlmsg_type == NLMSG_ERROR)
            return crosscheck_end(s, ((const struct nlmsgerr *)mnl_nlmsg_get_payload(nlh))->error);
        if (nlh->nlmsg_len > sizeof(fpool))
            return crosscheck_end(s, -EMSGSIZE);
        ct = nfct_new();
        if (!ct)
            return crosscheck_end(s, -ENOMEM);
        memset(&ref, 0, sizeof(ref));
        if (nfct_nlmsg_parse(nlh, ct) >= 0)
            fill_record(ct, &ref, rpool, &rused);
        nfct_destroy(ct);
        (*checked)++;
        if (parse_fast(nlh, &fast, fpool, &fused) < 0 ||
            records_differ(&fast, fpool, &ref, rpool)) {
            if (!*mismatched) {
                *first_fast = fast;
                *first_ref = ref;
            }
            (*mismatched)++;
        }
    }
    return 0;
}

/* One netlink message of len bytes, for tests.  The fast parser's record
 * goes to out (strings to pool) and, when ref is given, nfct_nlmsg_parse's
 * to ref (strings to ref_pool, also pool_size bytes; only for well-formed
 * messages: it reads a secctx up to its NUL), normalised as in the
 * cross-check; *ref_rc is nfct_nlmsg_parse's return and *differ whether
 * the records differ.  The
 * message is copied to a buffer of exactly its length first, so that
 * AddressSanitizer and valgrind see any read past its end.  Returns 0, or
 * -EMSGSIZE (len cannot hold the header or nlmsg_len, or a pool is smaller
 * than nlmsg_len), -EPROTO (not a ctnetlink conntrack message) or -EBADMSG
 * (the fast parser refuses it; ref is still filled). */
int ctpy_parse_message(const void *msg, uint32_t len, struct ctpy_record *out,
                       char *pool, uint32_t pool_size, struct ctpy_record *ref,
                       char *ref_pool, int *ref_rc, int *differ)
{
    struct nlmsghdr *nlh;
    char *copy, *fpool;
    uint32_t used = 0, rused = 0;
    int rc = 0, type;

    *ref_rc = 0;
    *differ = 0;
    if (len < NLMSG_HDRLEN)
        return -EMSGSIZE;
    copy = malloc(len);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, msg, len);
    nlh = (struct nlmsghdr *)copy;
    type = nlh->nlmsg_type;
    if (nlh->nlmsg_len < NLMSG_HDRLEN || nlh->nlmsg_len > len ||
        pool_size < nlh->nlmsg_len) {
        free(copy);
        return -EMSGSIZE;
    }
    if ((type >> 8) != NFNL_SUBSYS_CTNETLINK ||
        ((type & 0xff) != IPCTNL_MSG_CT_NEW && (type & 0xff) != IPCTNL_MSG_CT_DELETE)) {
        free(copy);
        return -EPROTO;
    }
    fpool = malloc(nlh->nlmsg_len ? nlh->nlmsg_len : 1);
    if (!fpool) {
        free(copy);
        return -ENOMEM;
    }
    if (parse_fast(nlh, out, fpool, &used) < 0)
        rc = -EBADMSG;
    else
        memcpy(pool, fpool, used);
    if (ref) {
        struct nf_conntrack *ct = nfct_new();
        memset(ref, 0, sizeof(*ref));
        if (!ct) {
            rc = -ENOMEM;
        } else {
            *ref_rc = nfct_nlmsg_parse(nlh, ct);
            if (*ref_rc >= 0) {
                fill_record(ct, ref, ref_pool, &rused);
                if (rc == 0)
                    *differ = records_differ(out, pool, ref, ref_pool);
            }
            nfct_destroy(ct);
        }
    }
    free(fpool);
    free(copy);
    return rc;
}

static void summary_add(struct ctpy_summary *out, const struct ctpy_record *r)
{
    out->total++;
    if (!(r->status & IPS_SEEN_REPLY))
        out->unreplied++;
    if (r->status & IPS_ASSURED)
        out->assured++;
    out->by_proto[r->orig.proto]++;
    if (r->orig.proto == IPPROTO_TCP && (r->present & CTPY_HAS_STATE) && r->state < 32)
        out->tcp_states[r->state]++;
}

int ctpy_dump_summary(struct ctpy_sock *s, const struct ctpy_filter *uf,
                      struct ctpy_summary *out)
{
    return ctpy_dump_top(s, uf, NULL, out);
}

/* Top talkers: one dump, each matching entry counted under a key built
 * from its fields, in an open-addressing hash table of distinct keys (the
 * memory is bounded by the keys, not by the entries).  A key is the
 * concatenation of its parts, packed:
 *   CTPY_TOP_SRC/DST  family (1) + address masked to the prefix (16)
 *   CTPY_TOP_SPORT/DPORT  has-port (1) + port, host order (2)
 *   CTPY_TOP_PROTO  protocol (1); CTPY_TOP_FAMILY  family (1)
 *   CTPY_TOP_STATE  protocol (1) + has-state (1) + state (1), all 0 without one
 *   CTPY_TOP_ZONE  zone (2); CTPY_TOP_MARK  mark (4)
 * A slot is a uint64_t count (0: empty) followed by the key. */
struct ctpy_top {
    struct ctpy_topspec spec;
    size_t keylen;
    size_t slot;            /* bytes per slot, a multiple of 8 */
    size_t cap;             /* slots, a power of two */
    size_t used;
    uint64_t total;
    char *slots;
};

static size_t top_part_len(uint8_t kind)
{
    switch (kind) {
    case CTPY_TOP_SRC: case CTPY_TOP_DST: return 17;
    case CTPY_TOP_SPORT: case CTPY_TOP_DPORT: case CTPY_TOP_STATE: return 3;
    case CTPY_TOP_PROTO: case CTPY_TOP_FAMILY: return 1;
    case CTPY_TOP_ZONE: return 2;
    case CTPY_TOP_MARK: return 4;
    }
    return 0;
}

int ctpy_top_keylen(const struct ctpy_topspec *spec)
{
    size_t len = 0;
    int i;

    if (spec->n == 0 || spec->n > CTPY_TOP_MAXPARTS)
        return -EINVAL;
    for (i = 0; i < spec->n; i++) {
        size_t l = top_part_len(spec->kind[i]);
        if (!l || spec->plen4[i] > 32 || spec->plen6[i] > 128)
            return -EINVAL;
        len += l;
    }
    return (int)len;
}

struct ctpy_top *ctpy_top_new(const struct ctpy_topspec *spec)
{
    struct ctpy_top *t;
    int len = ctpy_top_keylen(spec);

    if (len < 0)
        return NULL;
    t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->spec = *spec;
    t->keylen = (size_t)len;
    t->slot = (8 + t->keylen + 7) & ~(size_t)7;
    t->cap = 1024;
    t->slots = calloc(t->cap, t->slot);
    if (!t->slots) {
        free(t);
        return NULL;
    }
    return t;
}

void ctpy_top_free(struct ctpy_top *t)
{
    if (t) {
        free(t->slots);
        free(t);
    }
}

uint64_t ctpy_top_total(const struct ctpy_top *t)
{
    return t->total;
}

uint64_t ctpy_top_distinct(const struct ctpy_top *t)
{
    return t->used;
}

static void top_addr(uint8_t *k, const struct ctpy_tuple *o, const uint8_t *addr,
                     uint8_t plen4, uint8_t plen6)
{
    int n = o->family == AF_INET ? 4 : 16;
    int bits = o->family == AF_INET ? plen4 : plen6;
    int i;

    k[0] = o->family;
    memset(k + 1, 0, 16);
    for (i = 0; i < n && bits > 0; i++, bits -= 8)
        k[1 + i] = bits >= 8 ? addr[i] : (uint8_t)(addr[i] & (0xff00 >> bits));
}

static void top_key(const struct ctpy_top *t, const struct ctpy_record *r, uint8_t *k)
{
    const struct ctpy_tuple *o = &r->orig;
    int i;

    for (i = 0; i < t->spec.n; i++) {
        uint8_t kind = t->spec.kind[i];
        uint16_t u16;
        switch (kind) {
        case CTPY_TOP_SRC:
            top_addr(k, o, o->src, t->spec.plen4[i], t->spec.plen6[i]);
            break;
        case CTPY_TOP_DST:
            top_addr(k, o, o->dst, t->spec.plen4[i], t->spec.plen6[i]);
            break;
        case CTPY_TOP_SPORT:
        case CTPY_TOP_DPORT:
            k[0] = (uint8_t)has_ports(o->proto);
            u16 = k[0] ? (kind == CTPY_TOP_SPORT ? o->sport : o->dport) : 0;
            memcpy(k + 1, &u16, 2);
            break;
        case CTPY_TOP_PROTO:
            k[0] = o->proto;
            break;
        case CTPY_TOP_FAMILY:
            k[0] = o->family;
            break;
        case CTPY_TOP_STATE: /* one "no state" key whatever the protocol */
            k[1] = (r->present & CTPY_HAS_STATE) && (o->proto == IPPROTO_TCP ||
                   o->proto == IPPROTO_SCTP || o->proto == IPPROTO_DCCP);
            k[0] = k[1] ? o->proto : 0;
            k[2] = k[1] ? r->state : 0;
            break;
        case CTPY_TOP_ZONE:
            memcpy(k, &r->zone, 2);
            break;
        case CTPY_TOP_MARK:
            memcpy(k, &r->mark, 4);
            break;
        }
        k += top_part_len(kind);
    }
}

static uint64_t top_hash(const uint8_t *k, size_t len)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    size_t i;

    for (i = 0; i < len; i++) {
        h ^= k[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

/* The slot holding key k, or the empty slot where it goes. */
static char *top_find(char *slots, size_t cap, size_t slot, size_t keylen, const uint8_t *k)
{
    size_t i = (size_t)top_hash(k, keylen) & (cap - 1);

    for (;;) {
        char *e = slots + i * slot;
        uint64_t c;
        memcpy(&c, e, 8);
        if (!c || !memcmp(e + 8, k, keylen))
            return e;
        i = (i + 1) & (cap - 1);
    }
}

static int top_grow(struct ctpy_top *t)
{
    size_t cap = t->cap * 2, i;
    char *slots = calloc(cap, t->slot);

    if (!slots)
        return -ENOMEM;
    for (i = 0; i < t->cap; i++) {
        char *e = t->slots + i * t->slot;
        uint64_t c;
        memcpy(&c, e, 8);
        if (c)
            memcpy(top_find(slots, cap, t->slot, t->keylen, (uint8_t *)e + 8), e, t->slot);
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

static int top_add(struct ctpy_top *t, const struct ctpy_record *r)
{
    uint8_t k[CTPY_TOP_MAXPARTS * 17];
    char *e;
    uint64_t c;

    top_key(t, r, k);
    e = top_find(t->slots, t->cap, t->slot, t->keylen, k);
    memcpy(&c, e, 8);
    if (!c) {
        if ((t->used + 1) * 10 > t->cap * 7) {
            int err = top_grow(t);
            if (err)
                return err;
            e = top_find(t->slots, t->cap, t->slot, t->keylen, k);
        }
        memcpy(e + 8, k, t->keylen);
        t->used++;
    }
    c++;
    memcpy(e, &c, 8);
    t->total++;
    return 0;
}

/* The counting dump behind summary() and top(): each matching entry goes
 * into the summary and/or the key table (either may be NULL). */
int ctpy_dump_top(struct ctpy_sock *s, const struct ctpy_filter *uf,
                  struct ctpy_top *t, struct ctpy_summary *sum)
{
    char pool[8192];

    if (sum)
        memset(sum, 0, sizeof(*sum));
    while (s->dumping) {
        struct ctpy_record r;
        int n = dump_walk(s, uf, &r, 1, pool, sizeof(pool), NULL);
        if (n < 0)
            return n;
        if (n == 1 && sum)
            summary_add(sum, &r);
        if (n == 1 && t) {
            int err = top_add(t, &r);
            if (err) {
                s->dumping = 0; /* the caller closes the dump socket */
                s->done = 1;
                return err;
            }
        }
    }
    return 0;
}

/* Descending count, then ascending key: a stable order for ties. */
static int top_cmp(const void *a, const void *b, void *keylen)
{
    uint64_t ca, cb;

    memcpy(&ca, a, 8);
    memcpy(&cb, b, 8);
    if (ca != cb)
        return ca > cb ? -1 : 1;
    return memcmp((const char *)a + 8, (const char *)b + 8, *(size_t *)keylen);
}

/* Sort the keys (the table is no longer usable for counting afterwards)
 * and copy the first max into keys[] (keylen bytes each) and counts[].
 * Returns how many were copied. */
int ctpy_top_result(struct ctpy_top *t, int max, uint8_t *keys, uint64_t *counts)
{
    size_t i, n = 0;

    for (i = 0; i < t->cap; i++) {
        char *e = t->slots + i * t->slot;
        uint64_t c;
        memcpy(&c, e, 8);
        if (c) {
            if (n != i)
                memcpy(t->slots + n * t->slot, e, t->slot);
            n++;
        }
    }
    memset(t->slots + n * t->slot, 0, (t->cap - n) * t->slot);
    qsort_r(t->slots, n, t->slot, top_cmp, &t->keylen);
    if ((size_t)max > n)
        max = (int)n;
    for (i = 0; i < (size_t)max; i++) {
        memcpy(&counts[i], t->slots + i * t->slot, 8);
        memcpy(keys + i * t->keylen, t->slots + i * t->slot + 8, t->keylen);
    }
    return max;
}

/* ---- request / acknowledge -------------------------------------------- */

/* Send one request and receive until its end: the acknowledgement, an
 * error, or NLMSG_DONE for a dump.  Every other reply to it goes to cb
 * (when given).  Returns 0 or -errno. */
typedef void (*reply_cb)(const struct nlmsghdr *nlh, void *data);

static int exchange(struct ctpy_sock *s, const struct nlmsghdr *req,
                    reply_cb cb, void *data)
{
    int err;

    if (s->dumping)
        return -EBUSY;
    err = send_all(s, req, req->nlmsg_len);
    if (err)
        return err;
    for (;;) {
        ssize_t got = recv_some(s);
        const struct nlmsghdr *nlh;
        int len;

        if (got < 0) {
            drain(s);
            return (int)got;
        }
        len = (int)got;
        for (nlh = (const struct nlmsghdr *)s->buf; mnl_nlmsg_ok(nlh, len);
             nlh = mnl_nlmsg_next(nlh, &len)) {
            if (nlh->nlmsg_seq != req->nlmsg_seq)
                continue; /* stale: a reply to an abandoned request */
            if (nlh->nlmsg_type == NLMSG_ERROR)
                return ((const struct nlmsgerr *)mnl_nlmsg_get_payload(nlh))->error;
            if (nlh->nlmsg_type == NLMSG_DONE)
                return 0;
            if (cb)
                cb(nlh, data);
        }
    }
}

struct one_record {
    struct ctpy_record *out;
    char *pool;
    uint32_t pool_size;
    int stored;
    int bad;                /* the reply broke the ABI */
};

static void keep_first_record(const struct nlmsghdr *nlh, void *data)
{
    struct one_record *o = data;
    uint32_t used = 0;

    if (o->out && !o->stored && o->pool_size >= nlh->nlmsg_len) {
        if (parse_fast(nlh, o->out, o->pool, &used) == 0)
            o->stored = 1;
        else
            o->bad = 1;
    }
}

int ctpy_request(struct ctpy_sock *s, uint8_t msg, uint16_t flags,
                 const struct ctpy_record *r, const char *pool,
                 struct ctpy_record *out, char *out_pool,
                 uint32_t out_pool_size)
{
    char buf[CTPY_MSG_BUF];
    struct one_record o = {out, out_pool, out_pool_size, 0, 0};
    int len, err;

    len = build_request(buf, msg, flags | NLM_F_ACK, r, pool, 1, ++s->seq);
    if (len < 0)
        return len;
    err = exchange(s, (struct nlmsghdr *)buf, keep_first_record, &o);
    if (err < 0)
        return err;
    return o.bad ? -EBADMSG : o.stored;
}

int ctpy_flush(struct ctpy_sock *s, uint8_t family,
               const struct ctpy_kfilter *kf)
{
    char buf[CTPY_MSG_BUF];
    struct nlmsghdr *nlh;

    /* Version 1 makes the kernel honour the family; with version 0 (what
     * conntrack(8) sends) a flush of one family empties all of them. */
    nlh = put_header(buf, IPCTNL_MSG_CT_DELETE, NLM_F_ACK, family, 1, ++s->seq);
    put_kfilter(nlh, kf);
    return exchange(s, nlh, NULL, NULL);
}

/* ---- batched requests (deletes, creates) --------------------------------------------------- */

int ctpy_batch(struct ctpy_sock *s, uint8_t msg, uint16_t flags,
               const struct ctpy_record *recs, const char *pool, int n,
               int pin_id, struct ctpy_batch_result *res)
{
    char *chunk;
    int i = 0;

    memset(res, 0, sizeof(*res));
    if (s->dumping)
        return -EBUSY;
    chunk = malloc(CTPY_SEND_CHUNK);
    if (!chunk)
        return -ENOMEM;
    while (i < n) {
        uint32_t first_seq = s->seq + 1;
        size_t used = 0;
        int start = i, pending, err;

        /* Many requests in one sendmsg; the kernel handles them in order
         * and acknowledges each.  A chunk is small enough that its
         * acknowledgements fit the receive buffer. */
        while (i < n && i - start < s->max_inflight &&
               CTPY_SEND_CHUNK - used >= CTPY_MSG_BUF) {
            int len = build_request(chunk + used, msg, flags | NLM_F_ACK,
                                    &recs[i], pool, pin_id, ++s->seq);
            if (len < 0) {
                free(chunk);
                return len;
            }
            used += NLMSG_ALIGN((size_t)len);
            i++;
        }
        err = send_all(s, chunk, used);
        if (err) {
            free(chunk);
            return err;
        }
        pending = i - start;
        while (pending > 0) {
            ssize_t got = recv_some(s);
            struct nlmsghdr *nlh;
            int len;

            if (got < 0) {
                drain(s);
                free(chunk);
                return (int)got;
            }
            len = (int)got;
            for (nlh = (struct nlmsghdr *)s->buf; mnl_nlmsg_ok(nlh, len);
                 nlh = mnl_nlmsg_next(nlh, &len)) {
                const struct nlmsgerr *e;
                uint32_t k = nlh->nlmsg_seq - first_seq;

                if (nlh->nlmsg_type != NLMSG_ERROR || k >= (uint32_t)(i - start))
                    continue;
                e = mnl_nlmsg_get_payload(nlh);
                if (k == 0 && e->error == -EPERM) {
                    /* nfnetlink checks CAP_NET_ADMIN once per sendmsg: it
                     * acks the first request with EPERM and drops the rest,
                     * whose acks never come.  Every request is refused. */
                    if (!res->failed) {
                        res->first_errno = EPERM;
                        res->first_failed = start;
                    }
                    res->failed += n - start;
                    drain(s);
                    free(chunk);
                    return 0;
                }
                pending--;
                if (e->error == 0) {
                    res->done++;
                } else if (e->error == -ENOENT) {
                    res->vanished++;
                } else {
                    if (!res->failed) {
                        res->first_errno = -e->error;
                        res->first_failed = start + k;
                    }
                    res->failed++;
                }
            }
        }
    }
    free(chunk);
    return 0;
}

/* ---- statistics -------------------------------------------------------- */

struct stats_ctx {
    const struct nlattr *tb[32];
    int max;
};

static int stats_attr_cb(const struct nlattr *attr, void *data)
{
    struct stats_ctx *c = data;
    int type = mnl_attr_get_type(attr);

    if (type <= c->max && type < 32 && mnl_attr_get_payload_len(attr) >= 4)
        c->tb[type] = attr;
    return MNL_CB_OK;
}

static uint32_t attr_be32(const struct nlattr *a)
{
    return a ? ntohl(mnl_attr_get_u32(a)) : 0;
}

struct global_stats {
    uint32_t *entries;
    uint32_t *max_entries;
    int seen;
};

static void keep_global_stats(const struct nlmsghdr *nlh, void *data)
{
    struct global_stats *g = data;
    struct stats_ctx c;

    if ((nlh->nlmsg_type & 0xff) != IPCTNL_MSG_CT_GET_STATS)
        return;
    memset(&c, 0, sizeof(c));
    c.max = CTA_STATS_GLOBAL_MAX;
    mnl_attr_parse(nlh, sizeof(struct nfgenmsg), stats_attr_cb, &c);
    *g->entries = attr_be32(c.tb[CTA_STATS_GLOBAL_ENTRIES]);
    *g->max_entries = attr_be32(c.tb[CTA_STATS_GLOBAL_MAX_ENTRIES]);
    g->seen = 1;
}

int ctpy_global_stats(struct ctpy_sock *s, uint32_t *entries,
                      uint32_t *max_entries)
{
    char buf[CTPY_MSG_BUF];
    struct global_stats g = {entries, max_entries, 0};
    struct nlmsghdr *nlh;
    int err;

    nlh = put_header(buf, IPCTNL_MSG_CT_GET_STATS, NLM_F_ACK, AF_UNSPEC, 0, ++s->seq);
    err = exchange(s, nlh, keep_global_stats, &g);
    if (err)
        return err;
    return g.seen ? 0 : -ENODATA;
}

struct cpu_stats {
    struct ctpy_cpu_stats *out;
    int max;
    int n;
};

static void keep_cpu_stats(const struct nlmsghdr *nlh, void *data)
{
    struct cpu_stats *cs = data;
    const struct nfgenmsg *nfh = mnl_nlmsg_get_payload(nlh);
    struct ctpy_cpu_stats *o;
    struct stats_ctx c;

    if (cs->n >= cs->max)
        return;
    memset(&c, 0, sizeof(c));
    c.max = CTA_STATS_MAX;
    mnl_attr_parse(nlh, sizeof(*nfh), stats_attr_cb, &c);
    o = &cs->out[cs->n++];
    memset(o, 0, sizeof(*o));
    o->cpu = ntohs(nfh->res_id);
    /* Only what this kernel sends: older kernels lack chaintoolong (5.15) and
     * clash_resolve (5.9), newer ones dropped ignore (5.13). */
#define KEEP(bit, field, attr) \
    if (c.tb[attr]) { o->field = attr_be32(c.tb[attr]); o->present |= 1u << (bit); }
    KEEP(0, found, CTA_STATS_FOUND)
    KEEP(1, invalid, CTA_STATS_INVALID)
    KEEP(2, ignore, CTA_STATS_IGNORE)
    KEEP(3, insert, CTA_STATS_INSERT)
    KEEP(4, insert_failed, CTA_STATS_INSERT_FAILED)
    KEEP(5, drop, CTA_STATS_DROP)
    KEEP(6, early_drop, CTA_STATS_EARLY_DROP)
    KEEP(7, error, CTA_STATS_ERROR)
    KEEP(8, search_restart, CTA_STATS_SEARCH_RESTART)
    KEEP(9, clash_resolve, CTA_STATS_CLASH_RESOLVE)
    KEEP(10, chaintoolong, CTA_STATS_CHAIN_TOOLONG)
#undef KEEP
}

int ctpy_cpu_stats(struct ctpy_sock *s, struct ctpy_cpu_stats *out, int max)
{
    char buf[CTPY_MSG_BUF];
    struct cpu_stats cs = {out, max, 0};
    struct nlmsghdr *nlh;
    int err;

    nlh = put_header(buf, IPCTNL_MSG_CT_GET_STATS_CPU, NLM_F_DUMP, AF_UNSPEC, 0, ++s->seq);
    err = exchange(s, nlh, keep_cpu_stats, &cs);
    return err < 0 ? err : cs.n;
}

/* ---- events ------------------------------------------------------------ */

int ctpy_events_subscribe(struct ctpy_sock *s, uint32_t types)
{
    static const struct { uint32_t type; int group; } groups[] = {
        {CTPY_EV_NEW, NFNLGRP_CONNTRACK_NEW},
        {CTPY_EV_UPDATE, NFNLGRP_CONNTRACK_UPDATE},
        {CTPY_EV_DESTROY, NFNLGRP_CONNTRACK_DESTROY},
    };
    size_t i;

    for (i = 0; i < sizeof(groups) / sizeof(groups[0]); i++) {
        int g = groups[i].group;
        if (!(types & groups[i].type))
            continue;
        if (setsockopt(s->fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof(g)) < 0)
            return -errno;
    }
    s->len = s->off = 0;
    if (ctpy_events_drops(s, &s->drops_base) < 0)
        s->drops_base = 0;
    return 0;
}

int ctpy_events_fd(const struct ctpy_sock *s)
{
    return s->fd;
}

/* The kernel's count of messages it dropped for this socket because the
 * receive buffer was full (netlink_overrun): SK_MEMINFO_DROPS.  Messages
 * that a socket filter rejects are not counted. */
int ctpy_events_drops(const struct ctpy_sock *s, uint32_t *drops)
{
    uint32_t mem[SK_MEMINFO_VARS];
    socklen_t len = sizeof(mem);

    memset(mem, 0, sizeof(mem));
    if (getsockopt(s->fd, SOL_SOCKET, SO_MEMINFO, mem, &len) < 0)
        return -errno;
    if (len < (SK_MEMINFO_DROPS + 1) * sizeof(uint32_t))
        return -EOPNOTSUPP;
    *drops = mem[SK_MEMINFO_DROPS];
    return 0;
}

int ctpy_events_bpf_zone(void)
{
#ifdef CTPY_HAVE_NFCT_FILTER_ZONE
    return 1;
#else
    return 0;
#endif
}

static uint32_t word_at(const uint8_t *p)
{
    uint32_t w;

    memcpy(&w, p, 4);
    return ntohl(w);
}

/* Add one address/mask to nfct_filter: its BPF code loads the address with
 * BPF_W (network to host order), so the values go in host order. */
static void bpf_addr(struct nfct_filter *f, const struct ctpy_cidr *c, int src)
{
    if (c->family == AF_INET) {
        struct nfct_filter_ipv4 v4;
        v4.addr = word_at(c->addr);
        v4.mask = word_at(c->mask);
        nfct_filter_add_attr(f, src ? NFCT_FILTER_SRC_IPV4 : NFCT_FILTER_DST_IPV4, &v4);
        nfct_filter_set_logic(f, src ? NFCT_FILTER_SRC_IPV4 : NFCT_FILTER_DST_IPV4,
                              NFCT_FILTER_LOGIC_POSITIVE);
    } else {
        struct nfct_filter_ipv6 v6;
        int k;
        for (k = 0; k < 4; k++) {
            v6.addr[k] = word_at(c->addr + 4 * k);
            v6.mask[k] = word_at(c->mask + 4 * k);
        }
        nfct_filter_add_attr(f, src ? NFCT_FILTER_SRC_IPV6 : NFCT_FILTER_DST_IPV6, &v6);
        nfct_filter_set_logic(f, src ? NFCT_FILTER_SRC_IPV6 : NFCT_FILTER_DST_IPV6,
                              NFCT_FILTER_LOGIC_POSITIVE);
    }
}

/* Compile b into libnetfilter_conntrack's event filter and attach it to the
 * socket (SO_ATTACH_FILTER).  Its program lets a message through when an
 * attribute it looks for is missing (an UPDATE without protocol info under
 * a state test, an IPv4 event under an IPv6 address test), so it only
 * narrows what ctpy_match then checks in full.  Its IPv4 address tests
 * search past the address nest and may drop an IPv6 event; a filter with
 * an IPv4 address never matches one (tests/test_events_bpf.py). */
int ctpy_events_bpf(struct ctpy_sock *s, const struct ctpy_bpf *b)
{
    struct nfct_filter *f;
    int rc;

    if (!b->fields)
        return 0;
    if ((b->fields & CTPY_B_ZONE) && !ctpy_events_bpf_zone())
        return -EOPNOTSUPP;
    f = nfct_filter_create();
    if (!f)
        return -ENOMEM;
    if (b->fields & CTPY_B_PROTO) {
        nfct_filter_add_attr_u32(f, NFCT_FILTER_L4PROTO, b->proto);
        nfct_filter_set_logic(f, NFCT_FILTER_L4PROTO, NFCT_FILTER_LOGIC_POSITIVE);
    }
    if (b->fields & CTPY_B_STATE) {
        uint16_t st;
        for (st = 0; st < 16; st++) {
            struct nfct_filter_proto fp = {IPPROTO_TCP, st};
            if (b->states & (1u << st))
                nfct_filter_add_attr(f, NFCT_FILTER_L4PROTO_STATE, &fp);
        }
        nfct_filter_set_logic(f, NFCT_FILTER_L4PROTO_STATE, NFCT_FILTER_LOGIC_POSITIVE);
    }
    if (b->fields & CTPY_B_SRC)
        bpf_addr(f, &b->src, 1);
    if (b->fields & CTPY_B_DST)
        bpf_addr(f, &b->dst, 0);
    if (b->fields & CTPY_B_MARK) {
        struct nfct_filter_dump_mark m = {b->mark_val, b->mark_mask};
        nfct_filter_add_attr(f, NFCT_FILTER_MARK, &m);
        nfct_filter_set_logic(f, NFCT_FILTER_MARK, NFCT_FILTER_LOGIC_POSITIVE);
    }
#ifdef CTPY_HAVE_NFCT_FILTER_ZONE
    if (b->fields & CTPY_B_ZONE) {
        uint16_t z = b->zone;
        nfct_filter_add_attr(f, NFCT_FILTER_ZONE, &z);
        nfct_filter_set_logic(f, NFCT_FILTER_ZONE, NFCT_FILTER_LOGIC_POSITIVE);
    }
#endif
    rc = nfct_filter_attach(s->fd, f) < 0 ? -errno : 0;
    nfct_filter_destroy(f);
    return rc;
}

static uint8_t event_type(const struct nlmsghdr *nlh)
{
    if ((nlh->nlmsg_type & 0xff) == IPCTNL_MSG_CT_DELETE)
        return CTPY_EV_DESTROY;
    if (nlh->nlmsg_flags & (NLM_F_CREATE | NLM_F_EXCL))
        return CTPY_EV_NEW;
    return CTPY_EV_UPDATE;
}

/* Up to max events that match uf.  Waits up to timeout_ms (-1: forever)
 * once, for the first message, and otherwise takes only what is already
 * queued, so the call returns to Python (signals, idle timeout) after every
 * wake-up even when nothing matched.
 *
 * A full receive buffer (the kernel dropped events) counts in *overflows.
 * The kernel reports ENOBUFS before the messages still queued, which were
 * all sent before the loss, and drops everything until the queue is empty:
 * so the loss sits where the queue runs dry.  The overflow is reported only
 * then, after the events returned with it (the caller yields them first);
 * until then it stays pending on the socket, and *lost grows by the
 * events the kernel dropped since the previous report (-1: unknown).
 * Returns the number of events or -errno. */
int ctpy_events_next(struct ctpy_sock *s, const struct ctpy_filter *uf,
                     struct ctpy_record *out, uint8_t *types, int max,
                     char *pool, uint32_t pool_size, int timeout_ms,
                     uint32_t *overflows, int64_t *lost)
{
    uint32_t used = 0;
    int n = 0, waited = 0;

    while (n < max) {
        const struct nlmsghdr *nlh;

        if (s->off >= s->len) {
            ssize_t got;
            int wait = (n > 0 || waited || s->overflow) ? 0 : timeout_ms;
            struct pollfd pfd = {s->fd, POLLIN, 0};
            int ready = poll(&pfd, 1, wait);

            waited = 1;
            if (ready < 0)  /* EINTR: back to Python, which handles the signal */
                return errno == EINTR ? n : -errno;
            if (ready == 0)
                goto drained;
            got = recv(s->fd, s->buf, CTPY_RECV_BUF, MSG_DONTWAIT);
            if (got < 0) {
                if (errno == ENOBUFS) {
                    s->overflow = 1;
                    continue;
                }
                if (errno == EAGAIN || errno == EINTR)
                    goto drained;
                return -errno;
            }
            s->len = (size_t)got;
            s->off = 0;
        }
        nlh = (const struct nlmsghdr *)(s->buf + s->off);
        if (!mnl_nlmsg_ok(nlh, (int)(s->len - s->off))) {
            s->len = s->off = 0;
            return -EBADMSG;
        }
        if (pool_size - used < nlh->nlmsg_len && n > 0)
            return n;
        s->off += NLMSG_ALIGN(nlh->nlmsg_len);
        if (nlh->nlmsg_type == NLMSG_ERROR || nlh->nlmsg_type == NLMSG_DONE ||
            pool_size - used < nlh->nlmsg_len)
            continue;
        {
            uint32_t before = used;
            uint8_t type = event_type(nlh);
            if (parse_fast(nlh, &out[n], pool, &used) == 0) {
                const struct ctpy_filter *f = uf;
                struct ctpy_filter no_labels;
                /* The kernel sends no labels with DESTROY: unknown, not zero. */
                if (type == CTPY_EV_DESTROY && (uf->fields & CTPY_F_LABELS) &&
                    !(out[n].present & CTPY_HAS_LABELS)) {
                    no_labels = *uf;
                    no_labels.fields &= ~(uint32_t)CTPY_F_LABELS;
                    f = &no_labels;
                }
                if (ctpy_match(f, &out[n])) {
                    types[n] = type;
                    n++;
                    continue;
                }
            }
            used = before;
        }
    }
    return n;

drained:
    if (s->overflow) {
        uint32_t drops;
        s->overflow = 0;
        (*overflows)++;
        /* The queue is empty, so the kernel has left its congested state:
         * every event lost so far is in the counter.  One that it drops
         * later raises ENOBUFS again and is reported with the next
         * overflow, so the reports add up to the counter. */
        if (*lost >= 0 && ctpy_events_drops(s, &drops) == 0) {
            *lost += (uint32_t)(drops - s->drops_base);
            s->drops_base = drops;
        } else {
            *lost = -1;
        }
    }
    return n;
}

int ctpy_setns(int netns_fd)
{
    return setns(netns_fd, CLONE_NEWNET) < 0 ? -errno : 0;
}

/* Move the calling thread into a new, empty network namespace (for probes). */
int ctpy_unshare_netns(void)
{
    return unshare(CLONE_NEWNET) < 0 ? -errno : 0;
}

const char *ctpy_nfct_version(void)
{
    return CTPY_NFCT_VERSION;
}
