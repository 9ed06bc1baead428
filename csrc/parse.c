/* parse.c: the one-pass parser of ctnetlink conntrack messages.
 *
 * The dump path reads ctnetlink attributes straight into a record: one pass,
 * no allocation, no call per attribute.  libnetfilter_conntrack's generic
 * parser (nfct_nlmsg_parse, used by fill_record in nfct.c) spends about as long
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
#include "ctpy_int.h"

#include <endian.h>

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
int parse_fast(const struct nlmsghdr *nlh, struct ctpy_record *r,
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

#undef A_OK
#undef A_NEXT
#undef A_TYPE
#undef A_DATA
#undef A_LEN
#undef A_FOR
#undef A_LEFTOVER
