/* stats.c: the table's statistics (IPCTNL_MSG_CT_GET_STATS: entries and the
 * limit) and the per-CPU counters (IPCTNL_MSG_CT_GET_STATS_CPU), each one
 * exchange (request.c) whose replies are parsed with libmnl.
 */
#include "ctpy_int.h"

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
