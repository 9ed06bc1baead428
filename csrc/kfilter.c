/* kfilter.c: the kernel-side filter (struct ctpy_kfilter) as attributes of a
 * dump or flush request: CTA_MARK/CTA_STATUS with their masks, CTA_ZONE, and
 * the tuples with CTA_FILTER's flags (libnetfilter_conntrack 1.0.9 cannot
 * express the latter two; built here with libmnl).
 */
#include "ctpy_int.h"

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

void put_kfilter(struct nlmsghdr *nlh, const struct ctpy_kfilter *kf)
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
