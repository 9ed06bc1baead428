/* match.c: the userspace filter (struct ctpy_filter), checked in C on every
 * parsed record of a dump and every event.  A new filter field is a
 * CTPY_F_* bit and a member in ctpy.h and one test in ctpy_match here.
 */
#include "ctpy_int.h"

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

int has_ports(uint8_t proto)
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
