/* nfct.c: records <-> libnetfilter_conntrack.
 *
 * What libnetfilter_conntrack is still used for (the socket, the message
 * headers, the kernel-side filter attributes and the parser on the hot path
 * are ours): building the conntrack attributes of a request from a record
 * (nfct_nlmsg_build, below), its generic parser as the reference that the
 * one-pass parser is checked against (fill_record, crosscheck.c), and the
 * event socket's BPF filter (nfct_filter, events.c).
 */
#include "ctpy_int.h"

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
void fill_record(const struct nf_conntrack *ct, struct ctpy_record *r,
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
int build_request(char *buf, uint8_t msg, uint16_t flags,
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
